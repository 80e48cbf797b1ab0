"""`python -m fairstamp ...`: the `fairstamp` command (`accelerate launch -m fairstamp eval`)."""

import sys

if __name__ == "__main__":
    from fairstamp.cli.main import main

    sys.exit(main())

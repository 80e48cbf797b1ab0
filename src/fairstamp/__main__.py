"""`python -m fairstamp ...`: the `fairstamp` command (`accelerate launch -m fairstamp eval`)."""

if __name__ == "__main__":
    from fairstamp.cli.main import run

    run()

"""``python -m energymask``: the ``energymask`` command line (see ``energymask --help``)."""

if __name__ == "__main__":
    from energymask.lightning_modules.app.cli import main

    raise SystemExit(main())

"""The `mouaadnet` command line: one module per command group, wiring only (the work is in the other packages).

`main` holds the app (the console script `mouaadnet = mouaadnet.cli.main:app`) and registers `train`, `export`,
`serve` and `pipeline`; `python -m mouaadnet.cli` runs the same app.
"""

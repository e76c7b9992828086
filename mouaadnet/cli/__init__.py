"""The `mouaadnet` command line: one module per command group, wiring only (the work is in the other packages).

`main` holds the app (the console script `mouaadnet = mouaadnet.cli.main:app`) and registers `info` and the groups: `train`
(train, evaluate, data check), `export` (reparam, qat, export, gates, compile-trt), `bench` (every benchmark
command), `serve` (serve, detect), `pipeline`, `apps` (web, app) and `weights` (ship, verify); `_common` holds what they share.
`python -m mouaadnet.cli` runs the same app.
"""

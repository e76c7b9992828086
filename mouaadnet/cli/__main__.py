"""`python -m mouaadnet.cli ...` == `mouaadnet ...`."""

from mouaadnet.cli.main import app

app()

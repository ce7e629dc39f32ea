"""``python -m k2d_cli`` (and ``accelerate launch -m k2d_cli distill ...``)."""

from k2d_cli.main import main

main()

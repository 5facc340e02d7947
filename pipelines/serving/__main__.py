"""``python -m pipelines.serving --model models:/ots@champion [--port 5001] ...``: :mod:`pipelines.serving.server`."""

from pipelines.serving.server import main

if __name__ == "__main__":
    raise SystemExit(main())

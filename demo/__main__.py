"""``python -m demo``: run the end-to-end demo (see :mod:`demo.app`)."""

from demo.app import main

if __name__ == "__main__":
    raise SystemExit(main())

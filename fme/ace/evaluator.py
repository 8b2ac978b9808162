"""``python -m fme.ace.evaluator CONFIG.yaml``: ACE's name for ``fme.ace.evaluate``."""

from fme.ace.evaluate.main import main

if __name__ == "__main__":
    main()

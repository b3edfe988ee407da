"""``python -m mtlrec ...`` (and ``torchrun ... -m mtlrec train CONFIG``): the ``mtlrec`` command line."""

from mtlrec.cli import main

if __name__ == "__main__":
    main()

"""`python -m bench [--quick] [options]`: see bench/README.md."""

from bench.run import main

if __name__ == "__main__":
    main()

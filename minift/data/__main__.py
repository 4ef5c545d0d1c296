"""`python -m minift.data [--out DIR] [--no-tokenizer]`: regenerate the shipped files in data/ (see build.py)."""
import argparse
import sys

from ..errors import MiniftError
from .build import regenerate
from .loaders import checkout_data_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minift.data",
                                     description="Regenerate minift's shipped data: tokenizer and task files.")
    checkout = checkout_data_dir()
    parser.add_argument("--out", default=checkout, required=checkout is None,
                        help="output folder (default: the source checkout's data/; needed when minift is installed)")
    parser.add_argument("--no-tokenizer", action="store_true", help="write the tasks only")
    args = parser.parse_args(argv)
    try:
        regenerate(args.out, tokenizer=not args.no_tokenizer)
    except MiniftError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Download a public corpus for a recipe's download stage; offline, say so in one line.

Usage::

    python -m q4asr.corpora.download librispeech DL_DIR --copy-option=--corpus-dir \\
        [--base-url http://www.openslr.org/resources]

The server is asked first (an HTTP HEAD of the corpus's resource page); when it cannot
be reached, or the network goes during the download, the error is one line naming the
URL, the reason and ``--copy-option``, the recipe's option for an existing copy.
"""

from __future__ import annotations

import argparse
import logging
import sys
import urllib.error
import urllib.request
from pathlib import Path

from lhotse.recipes import download_librispeech

from q4asr.utils import setup_logging

log = logging.getLogger("q4asr.download")

OPENSLR = "http://www.openslr.org/resources"
# corpus -> (its resource number on OpenSLR)
CORPORA = {"librispeech": "12"}


class Unreachable(RuntimeError):
    """The corpus's server cannot be reached."""


def check_reachable(url: str, timeout: float = 20.0) -> None:
    """Raise :class:`Unreachable` unless the server at ``url`` answers (any HTTP
    status counts as an answer)."""
    try:
        urllib.request.urlopen(
            urllib.request.Request(url, method="HEAD"), timeout=timeout
        ).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise Unreachable(f"cannot reach {url} ({reason})") from None


def download(corpus: str, target: Path, base_url: str = OPENSLR) -> None:
    """Download ``corpus`` (a key of :data:`CORPORA`) into ``target``."""
    url = f"{base_url.rstrip('/')}/{CORPORA[corpus]}/"
    check_reachable(url)
    try:
        if corpus == "librispeech":
            download_librispeech(target, dataset_parts="librispeech", base_url=base_url)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise Unreachable(f"lost {url} during the download ({reason})") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m q4asr.corpora.download", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("corpus", choices=sorted(CORPORA))
    p.add_argument("target", type=Path, help="download directory")
    p.add_argument(
        "--copy-option",
        required=True,
        help="the recipe's option for an existing copy (named in the error)",
    )
    p.add_argument("--base-url", default=OPENSLR, help="OpenSLR or one of its mirrors")
    args = p.parse_args(argv)
    setup_logging()
    try:
        download(args.corpus, args.target, args.base_url)
    except Unreachable as e:
        log.error(
            "%s download: %s; no network? give an existing copy with %s DIR",
            args.corpus,
            e,
            args.copy_option,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

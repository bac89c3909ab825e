"""`keeper usage import FILE`: queue a file of usage rows for the keeper to validate."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from keeper.cli.common import (
    DATABASE_URL_ENV,
    Formatter,
    add_database_target,
    add_group,
    add_json,
    chain_id,
    target_database_url,
)


def cmd_usage_import(args: argparse.Namespace) -> int:
    """Queue the rows of a usage file in `usage_inbox` for the keeper to validate."""
    import json

    import anyio

    from keeper.ops import usage_files, usage_import

    dsn = target_database_url(args)
    fmt = usage_files.file_format(args.file, args.format)
    source = args.source or usage_files.source_name(args.file)
    with usage_files.open_file(args.file) as stream:
        # The CSV header is checked here, before the database is touched.
        reader = usage_files.UsageReader(stream, fmt, source=source, chain_id=args.chain_id)
        progress = usage_import.progress_bar(sys.stderr)
        summary = anyio.run(lambda: usage_import.import_to_database(dsn, reader, progress=progress))
    print(json.dumps(summary.as_dict()) if args.json else summary.text())
    return 0


def add_parser(sub: Any) -> None:
    """`keeper usage import FILE [options]`."""
    usage_sub = add_group(
        sub,
        "usage",
        "usage rows: import a file of them for the keeper to validate",
        "Usage rows for the usage oracle.",
    )
    imp = usage_sub.add_parser(
        "import",
        formatter_class=Formatter,
        help="queue the rows of a CSV or JSON-lines file for validation",
        description=(
            "Queue the usage rows of FILE in the usage_inbox table, where the keeper validates\n"
            "them on its next planning pass. Each value is stored as the text it has in the\n"
            "file: nothing is parsed, rounded or corrected here, and a row the keeper refuses\n"
            "stays visible in keeper.usage_rejected with a reason code and a detail.\n\n"
            "Formats (from FILE's extension, or --format):\n"
            "  csv    (.csv) a header row naming the columns stream_id, units, producer_key\n"
            "         and optionally endpoint (the name the payee published), label,\n"
            "         observed_at, chain_id, in any order; then one row\n"
            "         per line (a quoted field may not hold a line break). An empty field is\n"
            "         stored as NULL. Any other column, and a file without a header row (an\n"
            "         empty one too), is refused before anything is written.\n"
            "  jsonl  (.jsonl, .ndjson) one JSON object per line with those keys. Numbers\n"
            "         keep the text they were written with (1e3 stays 1e3), null and a\n"
            "         missing key are NULL, true/false are stored as text. A key that is\n"
            "         not one of those stops the import.\n"
            "FILE may be - for standard input (then give --format). The file must be UTF-8\n"
            "(a BOM is ignored). Each row's source is <name>:<line number>, e.g. usage.csv:17.\n\n"
            "A line that cannot be read at all (not valid JSON, not an object, the wrong\n"
            "number of CSV fields, not UTF-8, a NUL character) is not dropped: it is stored\n"
            "as a row rejected with reason malformed_line, the problem and the start of the\n"
            "line in its detail. Blank lines are skipped. chain_id is a bigint column: a\n"
            "chain_id that is not a whole number (ASCII digits, an optional sign, only\n"
            "spaces around them; the grammar of stream_id and units too) or is outside\n"
            "bigint's range stops the import; a blank one takes --chain-id.\n\n"
            "The rows are copied 10,000 at a time, all in ONE transaction: if anything fails\n"
            "part-way (a bad chain_id, a row the database refuses, a lost connection,\n"
            "Ctrl-C), nothing at all is imported, and the file can be imported again as a\n"
            "whole. Importing a file twice queues its rows twice; an accepted report's\n"
            "producer_key is unique per chain, so the same usage is never charged twice.\n\n"
            "On a terminal, a progress line on stderr shows rows read and rows per second.\n"
            "At the end, a summary on stdout: rows read, rows queued for validation,\n"
            "malformed lines kept as rejected, blank lines skipped, seconds taken.\n"
            "The database is the one of --config FILE (database.url, or\n"
            f"KEEPER_DATABASE__URL), else --database-url, else ${DATABASE_URL_ENV}.\n"
            "Exit status 0 when the file was imported (malformed lines included), 1 when\n"
            "nothing was."
        ),
    )
    imp.add_argument(
        "file",
        metavar="FILE",
        help="the usage file (.csv, .jsonl or .ndjson); - reads standard input",
    )
    imp.add_argument(
        "--format",
        choices=["csv", "jsonl"],
        help="the file's format; default: from FILE's extension (needed for -)",
    )
    imp.add_argument(
        "--chain-id",
        type=chain_id,
        metavar="N",
        help="chain id stored for rows that carry none; default: NULL, which means the chain "
        "of the keeper that validates the row (give it when several chains share a database)",
    )
    imp.add_argument(
        "--source",
        metavar="NAME",
        help="name stored in each row's source, before :<line number>; default: FILE as "
        "given (stdin for -)",
    )
    add_database_target(
        imp, "the keeper's TOML configuration: import into the database of its database.url"
    )
    add_json(imp, "print the summary as one JSON object instead")
    imp.set_defaults(handler=cmd_usage_import)

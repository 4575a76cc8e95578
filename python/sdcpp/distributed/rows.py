"""The rows of a batch job: read from a list of dicts or a JSONL file, checked, given their seed and output name up
front (so a run is deterministic and resumable whatever order the actors take them in)."""

from __future__ import annotations

import json
import os

from .. import checks

# Row fields that are generate() options (everything else in a row is refused, so a typo is not silently dropped).
OPTION_FIELDS = ("width", "height", "steps", "guidance_scale", "sampler", "schedule", "clip_skip", "eta",
                 "num_images", "timestep_spacing")
ROW_FIELDS = ("id", "prompt", "negative_prompt", "seed", *OPTION_FIELDS)


def read_rows(source) -> list[dict]:
    """A list of dicts (or of prompt strings), or a path to a JSONL file (one object, or one string, per line)."""
    if isinstance(source, (str, os.PathLike)):
        rows = []
        with open(source) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise ValueError(f"{os.fspath(source)}, line {n}: not JSON ({e})") from None
        return rows
    return list(source)


def prepare_rows(source, base_seed: int = 0) -> list[dict]:
    """Each row as a dict with id, prompt, seed and output file name. Rows without a seed get base_seed + their
    position; rows without an id get their position. Fields are type-checked here only as far as the row's own
    shape goes: a row whose options generate() refuses is recorded as failed when it runs, the others go on."""
    out, seen = [], set()
    for i, row in enumerate(read_rows(source)):
        if isinstance(row, str):
            row = {"prompt": row}
        if not isinstance(row, dict):
            raise TypeError(f"row {i}: expected an object with a prompt, got {type(row).__name__}")
        unknown = set(row) - set(ROW_FIELDS)
        if unknown:
            raise ValueError(f"row {i}: unknown fields {sorted(unknown)}; rows take {list(ROW_FIELDS)}")
        if not isinstance(row.get("prompt"), str):
            raise ValueError(f"row {i}: 'prompt' must be a string")
        rid = str(row.get("id", f"{i:06d}"))
        if not rid or os.sep in rid or rid.startswith(".") or rid in seen:
            raise ValueError(f"row {i}: id {rid!r} must be unique and non-empty, without '{os.sep}' or a leading '.'")
        seen.add(rid)
        seed = row.get("seed", base_seed + i)
        seed = checks.integer(f"row {i} seed", seed, minimum=0, maximum=2**63)
        out.append(dict(row, id=rid, seed=seed, negative_prompt=row.get("negative_prompt", ""), file=f"{rid}.png"))
    return out

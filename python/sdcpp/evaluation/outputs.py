"""`sdcpp evaluate -o DIR`: the report as files (report.json, report.md, grid.png, and with matplotlib the plots
bytes_vs_psnr.png and speed_vs_psnr.png), written into a temporary folder renamed into place when complete."""

from __future__ import annotations

import math
import os
import shutil

import numpy as np
from PIL import Image, ImageDraw

from .report import MIB, EvaluationReport


def check_output_dir(path) -> str:
    """Refuse, before any work, a destination that exists and is not an empty folder."""
    path = os.fspath(path)
    if os.path.exists(path) and not (os.path.isdir(path) and not os.listdir(path)):
        raise FileExistsError(f"{path} exists and is not an empty folder; choose a new one")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"cannot write {path}: folder {parent} does not exist")
    return path


def grid(report: EvaluationReport) -> Image.Image:
    """One row per generated image (prompt x seed), one column per configuration, each captioned."""
    labels = [r.label for r in report.rows]
    columns = [report.images[label] for label in labels]
    n_rows = len(columns[0])
    h, w = columns[0][0].shape[:2]
    scale = max(1, math.ceil(160 / w))  # small test images are enlarged so the captions fit
    h, w = h * scale, w * scale
    caption = 14
    out = Image.new("RGB", (w * len(labels), (h + caption) * n_rows), "white")
    draw = ImageDraw.Draw(out)
    for c, (row, images) in enumerate(zip(report.rows, columns, strict=True)):
        for r, img in enumerate(images):
            tile = Image.fromarray(np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8), "RGB")
            if scale > 1:
                tile = tile.resize((w, h), Image.NEAREST)
            out.paste(tile, (c * w, r * (h + caption) + caption))
            psnr = row.per_image[r]["psnr"] if r < len(row.per_image) else None
            text = row.label if psnr is None or math.isinf(psnr) else f"{row.label} {psnr:.1f} dB"
            draw.text((c * w + 2, r * (h + caption) + 1), text, fill="black")
    return out


def _plots(report: EvaluationReport, folder: str) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    rows = [r for r in report.rows if r.psnr is not None and not math.isinf(r.psnr)]
    written = []
    for name, x_of, xlabel in (("bytes_vs_psnr.png", lambda r: r.total_bytes / MIB, "stored MiB"),
                               ("speed_vs_psnr.png", lambda r: r.step_s, "seconds per step")):
        pts = [(x_of(r), r.psnr, r.label) for r in rows if x_of(r) is not None]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
        ax.scatter([p[0] for p in pts], [p[1] for p in pts])
        for x, y, label in pts:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("PSNR vs reference (dB)")
        ax.set_title(report.model)
        fig.tight_layout()
        fig.savefig(os.path.join(folder, name))
        plt.close(fig)
        written.append(name)
    return written


def write_report(report: EvaluationReport, path, sensitivity=None) -> list[str]:
    """Write the files into `path` (see check_output_dir); returns their names."""
    path = check_output_dir(path)
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        report.to_json(os.path.join(tmp, "report.json"))
        md = f"# {report.model}\n\n{str(report).splitlines()[0]}\n\n{report.table(markdown=True)}\n"
        if sensitivity is not None:
            md += f"\n## Sensitivity\n\n```\n{sensitivity.table()}\n```\n"
            with open(os.path.join(tmp, "sensitivity.json"), "w") as f:
                import json

                json.dump(sensitivity.to_dict(), f, indent=1)
        with open(os.path.join(tmp, "report.md"), "w") as f:
            f.write(md)
        grid(report).save(os.path.join(tmp, "grid.png"))
        _plots(report, tmp)
        names = sorted(os.listdir(tmp))
        if os.path.isdir(path):
            os.rmdir(path)  # empty, checked above
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return names

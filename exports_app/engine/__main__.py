"""``python -m exports_app.engine plan.json``: make an export's files, printing progress as JSON lines.

The plan names the model (``model_path`` for a full or already merged model, else ``base_path`` + ``adapter_path``),
the ``work_dir`` to write into, ``gguf`` (a quantization, or null for none), ``modelfile`` (bool) and ``name``.
Every line printed is a JSON object: ``{"progress": 0.4, "phase": "converting"}`` while it works, then
``{"result": {...}}`` or ``{"error": "what to do"}`` (exit status 2) at the end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from exports_app.engine import gguf_export, merge, ollama

MERGE_SHARE = 0.4  # of the progress bar: merging (or copying), then the GGUF conversion, then the Modelfile


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def make(plan: dict[str, Any]) -> dict[str, Any]:
    """Make the plan's files in its work folder; returns the names of what it made."""
    work = Path(plan["work_dir"])
    work.mkdir(parents=True, exist_ok=True)
    merged = work / "merged"
    say(progress=0.02, phase="merging")
    if plan.get("model_path"):
        merge.copy_full_model(Path(plan["model_path"]), merged)
    else:
        merge.merge_adapter(Path(plan["base_path"]), Path(plan["adapter_path"]), merged)
    result: dict[str, Any] = {"merged": str(merged)}
    say(progress=MERGE_SHARE, phase="converting")
    if plan.get("gguf"):
        output = work / f"model-{plan['gguf']}.gguf"

        def progress(share: float) -> None:
            say(progress=round(MERGE_SHARE + share * (0.95 - MERGE_SHARE), 4), phase="converting")

        gguf_export.write_gguf(merged, output, quantization=plan["gguf"], name=plan.get("name") or "model",
                               progress=progress)  # fmt: skip
        result["gguf"] = str(output)
        if plan.get("modelfile"):
            (work / "Modelfile").write_text(ollama.modelfile_for(merged, output.name), encoding="utf-8")
            result["modelfile"] = str(work / "Modelfile")
    say(progress=0.97, phase="packaging")
    return result


def main(argv: list[str]) -> int:
    plan = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    try:
        result = make(plan)
    except merge.ExportError as error:
        say(error=str(error))
        return 2
    except MemoryError:
        say(error="The export ran out of memory: run it on a worker pool with more memory.")
        return 2
    except OSError as error:
        if error.errno == 28:  # ENOSPC
            say(error="The disk is full: free space on the server (old exports, checkpoints), then export again.")
            return 2
        raise
    say(result=result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

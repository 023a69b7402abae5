"""Training shards out of the lake, in the formats of the trainers people use, laid out like a
Hugging Face dataset repository. Modules by concern:

- query.py: the checked filter, one ordered query per format, streaming, constant thoughts
- convert.py: lake rows -> examples (SFT, single-step DPO, KTO, PRM), tool calls
- styles.py: examples -> trl / sharegpt (LLaMA-Factory) / openai rows and their schemas
- checks.py: each row against its trainer's rules (TRL, LLaMA-Factory, OpenAI, PRM)
- layout.py: splits by task hash, shards, destination safety, atomic swap
- card.py: README.md dataset card, dataset_info.json
- record.py: the log of exports (`trajforge exports`)
- exporter.py: one export, start to finish
"""

from trajforge.store.export.exporter import (
    EXPORT_THREADS,
    MEMORY_LIMIT,
    ExportResult,
    ExportSpec,
    export,
    export_sft,
    reader_limits,
)
from trajforge.store.export.layout import MARKER, parse_split
from trajforge.store.export.query import ExportError, filtered
from trajforge.store.export.record import list_exports

__all__ = [
    "EXPORT_THREADS",
    "MARKER",
    "MEMORY_LIMIT",
    "reader_limits",
    "ExportError",
    "ExportResult",
    "ExportSpec",
    "export",
    "export_sft",
    "filtered",
    "list_exports",
    "parse_split",
]

"""Tasks: the prompts and answers a claim is measured on, and builders for common ones."""
from ._task import BUILTIN_POSITIONS, EncodedTask, Task
from ._copying import copying, keep_correct
from ._greater_than import greater_than
from ._induction import induction
from ._ioi import ioi
from ._records import from_csv, from_dataframe, from_jsonl, from_records

#: Builders by name, as YAML claims refer to them (``task: {builder: ioi, n: 50}``).
BUILDERS = {"ioi": ioi, "induction": induction, "greater_than": greater_than,
            "copying": copying, "jsonl": from_jsonl, "csv": from_csv}

__all__ = ["Task", "EncodedTask", "BUILTIN_POSITIONS", "BUILDERS", "ioi", "induction",
           "greater_than", "copying", "keep_correct", "from_records", "from_dataframe",
           "from_csv", "from_jsonl"]

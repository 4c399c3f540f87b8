"""Every evaluation, one module each, and `TASKS`: the one list of them, in report order.

Adding an evaluation means adding its file here and its task to `TASKS`: the CLI (`tinystories
eval NAME`), the suite and the report all read this list.
"""

from __future__ import annotations

from tinystories.eval.task import Task
from tinystories.eval.tasks.bpb import BitsPerByte
from tinystories.eval.tasks.diversity import Diversity
from tinystories.eval.tasks.gpt_eval import GptEval
from tinystories.eval.tasks.instruct import Instruct
from tinystories.eval.tasks.pairwise import Pairwise
from tinystories.eval.tasks.probes import Probes

TASKS: tuple[Task, ...] = (GptEval(), Pairwise(), Instruct(), Probes(), Diversity(), BitsPerByte())


def registry() -> dict[str, Task]:
    """Every task by name, in report order."""
    return {task.name: task for task in TASKS}

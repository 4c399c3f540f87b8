"""Every evaluation, one module each; a module registers its task with `eval.task.register`.

Adding an evaluation means adding one file here: the registry imports every module of this
package, and the CLI (`tinystories eval NAME`), the suite and the report all read the
registry.
"""

from __future__ import annotations

import importlib
import pkgutil

from tinystories.eval.task import TASKS, Task

ORDER = ("gpt-eval", "pairwise", "instruct", "probes", "diversity", "bpb")  # report order; others follow


def registry() -> dict[str, Task]:
    """Every task by name, in report order."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    rank = {name: i for i, name in enumerate(ORDER)}
    return dict(sorted(TASKS.items(), key=lambda kv: rank.get(kv[0], len(rank))))

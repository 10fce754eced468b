"""pycocotools, imported where COCO AP is computed and nowhere else.

Training, the data path and the benchmarks run on machines without pycocotools (the device check's GPU
machine has none, docs/performance.md "The device check's machine"); only the evaluation needs it, so
its modules call `coco_api()` when they evaluate instead of importing it when they load.
"""

from __future__ import annotations

from typing import Any

from workloads.user_errors import UserError


class MissingEvaluatorError(UserError, ModuleNotFoundError):
    """pycocotools is not installed here; the message says what needs it and how to get it."""


def coco_api(what: str = "COCO keypoint evaluation") -> tuple[Any, Any]:
    """(pycocotools.coco.COCO, pycocotools.cocoeval.COCOeval); MissingEvaluatorError naming `what` when
    pycocotools is absent."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ModuleNotFoundError as err:
        raise MissingEvaluatorError(
            f"{what} needs pycocotools, which is not importable in this Python ({err}); install it "
            "(pip install 'pycocotools>=2.0.7'), or on a machine without network the wheel that "
            "`make device-wheels` puts in .whl/ (pip install --no-index .whl/pycocotools-*.whl)",
            name="pycocotools",
        ) from err
    return COCO, COCOeval

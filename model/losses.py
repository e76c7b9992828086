"""Multi-task loss: focal heatmap + boxes + BCE gender + soft-label cross-entropy age.

Boxes: arch v1 gets CIoU + L1 offset at each person's centre cell (CenterNet); arch v2 (an ``ltrb`` head output)
gets GIoU at every cell of each person's Gaussian core, TTFNet-style (``dense_box_targets``).

Every term is masked by the label masks and normalised by the number of labelled items, so a batch that
mixes fully labelled scenes, face crops with exact ages and body crops with age groups weighs each label
type by what it really has. ``MultiTaskLoss`` returns the weighted sum and each term for logging.

Each term is computed as (sum over labelled items, item count) before the division, so data-parallel training
can divide by the count of the *global* batch (``count_reducer``): then the per-process losses add up to the
one-process loss of the whole batch, and so do their gradients.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import field_validator

from .config import AGE_RANGES, HEAD_STRIDE, MAX_AGE, NUM_AGE_BINS, StrictConfig
from .decode import SIZE_LOG_LIMIT, cell_anchor, cell_anchors, cell_boxes, expected_age

GAUSSIAN_ALPHA = 0.54  # TTFNet: elliptical Gaussian sigma = alpha * box side / 6
GAUSSIAN_BETA = 0.54  # TTFNet: the box-regression core is the Gaussian truncated at beta * box side / 2
MIN_LOG_AREA_PX = 4.0  # log-area weights use at least a 2x2-px box, so every weight stays > 0
TEACHER_MIN_SCORE = 0.05  # cells where a distillation teacher's score is lower teach no box
MIN_SIDE_CELLS = 1e-3  # a target side distance at least this (cells): tiny boxes off their centre cell's anchor


class LossConfig(StrictConfig):
    """Weights ``w_task`` of the sum and the shape of the soft age labels."""

    heatmap: float = 1.0
    box: float = 2.0  # v1: 1 - CIoU of the box at each ground-truth centre; v2: weighted 1 - GIoU over the cores
    offset: float = 1.0  # L1 on the sub-cell center offset (v1 only)
    gender: float = 1.0
    age: float = 0.5  # cross-entropy against the soft age distribution
    age_l1: float = 0.02  # L1 of the expected age, in years: pulls the mean of the distribution
    age_sigma: float = 2.0  # std (years) of the Gaussian label around an exact age; 0 = one-hot
    # Distillation from a teacher's soft labels on crops of `distill: true` sources (mouaadnet.data.teacher), beside
    # the ground truth; 0 = off (the loss is then exactly the one without these keys).
    gender_distill: float = 0.0  # BCE against the teacher's P(female)
    age_distill: float = 0.0  # cross-entropy against a Gaussian of std distill_age_sigma around the teacher's age
    distill_age_sigma: float = 5.0  # years: wider than age_sigma, the teacher's own error is ~10 y MAE
    # Arch v2's score target: "gaussian" (CenterNet/TTFNet: a Gaussian peak at each centre cell, penalty-reduced focal
    # loss) or "quality" (GFL: at every cell that regresses a person, the IoU of that cell's own box with the person,
    # Quality Focal Loss), so the peak is where the box is good (docs/BENCHMARKS.md, "Where the box is lost").
    heatmap_target: Literal["gaussian", "quality"] = "gaussian"
    # Arch v2's box-loss weight of the cells of a person's core: TTFNet's Gaussian (the centre cells most) or uniform
    # (FCOS: the off-centre cells, where the peak often lands, regress as carefully as the centre).
    box_cell_weight: Literal["gaussian", "uniform"] = "gaussian"
    # Width of the Gaussian score target: sigma = heatmap_alpha * box side / 6 (TTFNet 0.54). Narrower peaks sit on
    # the centre cell more often, where the box is best (docs/BENCHMARKS.md, "Where the box is lost").
    heatmap_alpha: float = GAUSSIAN_ALPHA
    # Arch v2 with ``model.iou_score`` > 0: BCE of the IoU branch against each core cell's (detached) box IoU.
    iou: float = 1.0
    # Detector distillation from a converged v2 teacher (TrainConfig.detector_teacher), beside the ground truth:
    # BCE of the heatmap against the teacher's score at every cell (normalised by the teacher's score mass), and
    # 1 - GIoU of each cell's box against the teacher's box there, weighted by the teacher's score (cells >= 0.05).
    teacher_heatmap: float = 0.0
    teacher_box: float = 0.0

    @field_validator("heatmap_alpha")
    @classmethod
    def _positive_width(cls, value: float) -> float:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"must be in (0, 1] (a share of the box side / 6), got {value}")
        return value

    @field_validator("heatmap", "box", "offset", "gender", "age", "age_l1", "age_sigma", "gender_distill",
                     "age_distill", "distill_age_sigma", "iou",
                     "teacher_heatmap", "teacher_box")
    @classmethod
    def _non_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value


def focal_heatmap_parts(logits: torch.Tensor, target: torch.Tensor, image_mask: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """CenterNet penalty-reduced focal loss (alpha=2, beta=4): (sum over labelled images, #centers)."""
    pred = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    weight = image_mask.float().view(-1, 1, 1, 1)
    pos = (target >= 1.0).float() * weight
    neg = (1.0 - pos) * weight
    pos_loss = -torch.log(pred) * (1 - pred) ** 2 * pos
    neg_loss = -torch.log(1 - pred) * pred**2 * (1 - target) ** 4 * neg
    return pos_loss.sum() + neg_loss.sum(), pos.sum()


def quality_focal_parts(logits: torch.Tensor, quality: torch.Tensor, positive: torch.Tensor, image_mask: torch.Tensor,
                        beta: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """GFL's Quality Focal Loss (Li et al. 2020): BCE against a soft target (``quality`` in 0..1 at ``positive``
    cells, 0 elsewhere), scaled by |sigmoid - target|^beta; (sum over labelled images, #positive cells)."""
    logits = logits.float()
    weight = image_mask.float().view(-1, 1, 1, 1)
    target = torch.where(positive, quality, torch.zeros_like(quality))
    scale = (torch.sigmoid(logits) - target).abs().pow(beta)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * scale * weight
    return loss.sum(), (positive.float() * weight).sum()


def focal_heatmap_loss(logits: torch.Tensor, target: torch.Tensor, image_mask: torch.Tensor) -> torch.Tensor:
    """CenterNet penalty-reduced focal loss (alpha=2, beta=4), summed over labelled images / #centers."""
    total, count = focal_heatmap_parts(logits, target, image_mask)
    return total / count.clamp(min=1.0)


def ciou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """1 - Complete-IoU for x1,y1,x2,y2 boxes (..., 4); IoU, center distance and aspect-ratio terms."""
    px1, py1, px2, py2 = pred.unbind(-1)
    tx1, ty1, tx2, ty2 = target.unbind(-1)
    pw, ph = (px2 - px1).clamp(min=eps), (py2 - py1).clamp(min=eps)
    tw, th = (tx2 - tx1).clamp(min=eps), (ty2 - ty1).clamp(min=eps)
    inter = (torch.min(px2, tx2) - torch.max(px1, tx1)).clamp(min=0) * (torch.min(py2, ty2) - torch.max(py1, ty1)).clamp(min=0)
    union = pw * ph + tw * th - inter + eps
    iou = inter / union
    enclose_w = torch.max(px2, tx2) - torch.min(px1, tx1)
    enclose_h = torch.max(py2, ty2) - torch.min(py1, ty1)
    diag = enclose_w**2 + enclose_h**2 + eps
    center_dist = ((px1 + px2 - tx1 - tx2) ** 2 + (py1 + py2 - ty1 - ty2) ** 2) / 4
    v = (4 / math.pi**2) * (torch.atan(tw / th) - torch.atan(pw / ph)) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return 1 - (iou - center_dist / diag - alpha * v)


def box_iou_pairs(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """IoU of each x1,y1,x2,y2 box with the one at the same index (..., 4) -> (...)."""
    px1, py1, px2, py2 = pred.unbind(-1)
    tx1, ty1, tx2, ty2 = target.unbind(-1)
    inter = (torch.min(px2, tx2) - torch.max(px1, tx1)).clamp(min=0) * (torch.min(py2, ty2) - torch.max(py1, ty1)).clamp(min=0)
    union = (px2 - px1).clamp(min=0) * (py2 - py1).clamp(min=0) + (tx2 - tx1).clamp(min=0) * (ty2 - ty1).clamp(min=0) - inter
    return inter / (union + eps)


def giou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """1 - Generalized IoU (Rezatofighi et al. 2019) for x1,y1,x2,y2 boxes (..., 4), TTFNet's box loss."""
    px1, py1, px2, py2 = pred.unbind(-1)
    tx1, ty1, tx2, ty2 = target.unbind(-1)
    inter = (torch.min(px2, tx2) - torch.max(px1, tx1)).clamp(min=0) * (torch.min(py2, ty2) - torch.max(py1, ty1)).clamp(min=0)
    union = (px2 - px1).clamp(min=0) * (py2 - py1).clamp(min=0) + (tx2 - tx1) * (ty2 - ty1) - inter + eps
    enclose = (torch.max(px2, tx2) - torch.min(px1, tx1)) * (torch.max(py2, ty2) - torch.min(py1, ty1)) + eps
    return 1 - (inter / union - (enclose - union) / enclose)


def age_target_distribution(age: torch.Tensor, age_group: torch.Tensor, sigma: float) -> torch.Tensor:
    """Soft labels over the 101 age bins: a Gaussian around an exact age, uniform over a labelled age range.

    ``age_group`` indexes ``AGE_RANGES`` (PETA groups, then FairFace bins).

    Rows with neither label are all zeros (masked out by the caller).
    """
    bins = torch.arange(NUM_AGE_BINS, dtype=torch.float32, device=age.device)
    exact = age.float().clamp(0, MAX_AGE).unsqueeze(-1)
    if sigma > 0:
        exact_dist = torch.exp(-0.5 * ((bins - exact) / sigma) ** 2)
    else:
        exact_dist = (bins == exact.round()).float()
    exact_dist = exact_dist / exact_dist.sum(-1, keepdim=True)
    ranges = torch.tensor(AGE_RANGES, dtype=torch.float32, device=age.device)
    group = age_group.clamp(min=0)
    low, high = ranges[group, 0].unsqueeze(-1), ranges[group, 1].unsqueeze(-1)
    group_dist = ((bins >= low) & (bins <= high)).float()
    group_dist = group_dist / group_dist.sum(-1, keepdim=True)
    has_age = (age >= 0).unsqueeze(-1)
    has_group = (age_group >= 0).unsqueeze(-1)
    return torch.where(has_age, exact_dist, torch.where(has_group, group_dist, torch.zeros_like(exact_dist)))


def scene_targets(batch: dict[str, torch.Tensor], height: int, width: int, stride: int = HEAD_STRIDE,
                  alpha: float = GAUSSIAN_ALPHA) -> dict[str, torch.Tensor]:
    """Heatmap [N,1,h,w] (elliptical Gaussians of sigma = ``alpha`` * side / 6), center cells, offsets, log-sizes
    and the valid-row mask for a scene batch."""
    boxes = batch["boxes"].float()
    valid = batch["box_mask"] & batch["has_boxes"].unsqueeze(1)
    valid = valid & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    centers = torch.stack([(boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2], -1) / stride
    cell_x = centers[..., 0].floor().clamp(0, width - 1)
    cell_y = centers[..., 1].floor().clamp(0, height - 1)
    w_cells = (boxes[..., 2] - boxes[..., 0]) / stride
    h_cells = (boxes[..., 3] - boxes[..., 1]) / stride
    sigma_x = (alpha * w_cells / 6).clamp(min=0.3)
    sigma_y = (alpha * h_cells / 6).clamp(min=0.3)
    xs = torch.arange(width, device=boxes.device, dtype=torch.float32).view(1, 1, 1, width)
    ys = torch.arange(height, device=boxes.device, dtype=torch.float32).view(1, 1, height, 1)
    dx = xs - cell_x[..., None, None]
    dy = ys - cell_y[..., None, None]
    gauss = torch.exp(-(dx**2) / (2 * sigma_x[..., None, None] ** 2) - dy**2 / (2 * sigma_y[..., None, None] ** 2))
    gauss = gauss * valid[..., None, None].float()
    heatmap = gauss.amax(dim=1, keepdim=True) if boxes.shape[1] else torch.zeros(boxes.shape[0], 1, height, width)
    return {
        "heatmap": heatmap,
        "index": (cell_y * width + cell_x).long(),
        "offset": centers - torch.stack([cell_x, cell_y], -1),
        "cell": torch.stack([cell_x, cell_y], -1),
        "valid": valid,
    }


def dense_box_targets(boxes: torch.Tensor, valid: torch.Tensor, height: int, width: int,
                      stride: int = HEAD_STRIDE, beta: float = GAUSSIAN_BETA,
                      cell_weight: str = "gaussian") -> dict[str, torch.Tensor]:
    """Arch v2 box targets at every cell: ``boxes`` [N,h*w,4] (the box each cell regresses, input px) and
    ``weight`` [N,h*w] (0 = no box loss there).

    TTFNet (Liu et al. 2020): a person's positive cells are its Gaussian core, the elliptical Gaussian around its
    centre cell truncated at beta * side / 2; each cell weighs its Gaussian value times log(box area), normalised
    so that the person's cells sum to log(area): every person counts once whatever its size (no large-box flood),
    larger ones somewhat more, and the centre cells most. FCOS: a cell is positive only when its centre lies inside
    the box (the distances must be positive), and a cell in two cores regresses the smaller box (ambiguity rule).
    The centre cell is always positive, even for boxes thinner than a cell (its distances are clamped).
    ``cell_weight="uniform"``: every positive cell of a person weighs the same (FCOS), still summing to log(area).
    """
    n, m = boxes.shape[:2]
    if m == 0:  # a batch of empty scenes: no cell regresses a box
        return {"boxes": boxes.new_zeros(n, height * width, 4), "weight": boxes.new_zeros(n, height * width)}
    x1, y1, x2, y2 = boxes.unbind(-1)
    w_cells, h_cells = (x2 - x1) / stride, (y2 - y1) / stride
    cell_x = ((x1 + x2) / 2 / stride).floor().clamp(0, width - 1)
    cell_y = ((y1 + y2) / 2 / stride).floor().clamp(0, height - 1)
    xs = torch.arange(width, device=boxes.device, dtype=torch.float32).view(1, 1, 1, width)
    ys = torch.arange(height, device=boxes.device, dtype=torch.float32).view(1, 1, height, 1)
    dx, dy = xs - cell_x[..., None, None], ys - cell_y[..., None, None]
    sigma_x = (beta * w_cells / 6).clamp(min=0.3)[..., None, None]
    sigma_y = (beta * h_cells / 6).clamp(min=0.3)[..., None, None]
    gauss = torch.exp(-(dx**2) / (2 * sigma_x**2) - dy**2 / (2 * sigma_y**2))
    core = (dx.abs() <= beta * w_cells[..., None, None] / 2) & (dy.abs() <= beta * h_cells[..., None, None] / 2)
    ax, ay = cell_anchor(xs, stride), cell_anchor(ys, stride)
    inside = ((ax > x1[..., None, None]) & (ax < x2[..., None, None]) &
              (ay > y1[..., None, None]) & (ay < y2[..., None, None]))
    positive = ((core & inside) | ((dx == 0) & (dy == 0))) & valid[..., None, None]  # [N,M,h,w]
    area = ((x2 - x1) * (y2 - y1)).clamp(min=MIN_LOG_AREA_PX)
    owner = torch.where(positive, area[..., None, None], torch.full_like(gauss, math.inf)).argmin(dim=1)  # [N,h,w]
    owned = positive & (torch.arange(m, device=boxes.device).view(1, m, 1, 1) == owner.unsqueeze(1))
    g = (gauss if cell_weight == "gaussian" else torch.ones_like(gauss)) * owned.float()
    per_person = torch.log(area) / g.sum(dim=(2, 3)).clamp(min=1e-6)  # [N,M]
    weight = (g * per_person[..., None, None]).sum(dim=1).reshape(n, -1)
    target = boxes.gather(1, owner.reshape(n, -1, 1).expand(-1, -1, 4))
    return {"boxes": target, "weight": weight}


def encode_ltrb(target: torch.Tensor, height: int, width: int, stride: int = HEAD_STRIDE) -> torch.Tensor:
    """The ``ltrb`` head output [N,4,h,w] that decodes to ``target`` boxes [N,h*w,4] at every cell (tests, teachers)."""
    ax, ay = cell_anchors(height, width, stride, target.device)
    d = torch.stack([ax - target[..., 0], ay - target[..., 1], target[..., 2] - ax, target[..., 3] - ay], -1)
    log_d = torch.log((d / stride).clamp(min=MIN_SIDE_CELLS))
    return log_d.transpose(1, 2).reshape(target.shape[0], 4, height, width)


def _gather_rows(maps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(N,C,h,w) maps at flat indices (N,M) -> (N,M,C)."""
    n, c = maps.shape[:2]
    return maps.reshape(n, c, -1).gather(2, index.unsqueeze(1).expand(n, c, index.shape[1])).transpose(1, 2)


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mask = mask.float()
    return (values * mask).sum(), mask.sum()


def _normalise(parts: dict[str, tuple[torch.Tensor, torch.Tensor]], count_reducer=None) -> dict[str, torch.Tensor]:
    """{term: (sum, count)} -> {term: sum / max(count, 1)}; ``count_reducer`` maps the stacked counts to the global
    ones (a sum over data-parallel processes)."""
    counts = torch.stack([count for _, count in parts.values()])
    if count_reducer is not None:
        counts = count_reducer(counts.detach())
    return {name: total / counts[i].clamp(min=1.0) for i, (name, (total, _)) in enumerate(parts.items())}


class MultiTaskLoss:
    """``loss(outputs, batch)`` -> (weighted total, {term: value}) for scene or crop batches.

    ``count_reducer`` (data-parallel training): a function that sums a tensor of per-term item counts over the
    processes; each term is then normalised by the labelled items of the global batch, so the processes' losses
    sum to the loss of the global batch. None: normalise by this batch alone.
    """

    def __init__(self, cfg: LossConfig | None = None, stride: int = HEAD_STRIDE, count_reducer=None):
        self.cfg = cfg or LossConfig()
        self.stride = stride
        self.count_reducer = count_reducer

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                 teacher: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if "heatmap" in outputs:
            parts = self.scene_parts(outputs, batch)
            if teacher is not None:
                parts.update(self.teacher_parts(outputs, teacher))
        else:
            parts = self.attribute_parts(outputs["gender"], outputs["age"], batch["gender"], batch["age"],
                                         batch["age_group"])
            if "teacher_gender" in batch:
                parts.update(self.distill_parts(outputs["gender"], outputs["age"], batch["teacher_gender"],
                                                batch["teacher_age"]))
        terms = _normalise(parts, self.count_reducer)
        weights = self.cfg.model_dump()
        total = sum(weights[name] * value for name, value in terms.items())
        return total, terms

    def scene_terms(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return _normalise(self.scene_parts(outputs, batch))

    def attribute_terms(self, gender_logit: torch.Tensor, age_logits: torch.Tensor, gender: torch.Tensor,
                        age: torch.Tensor, age_group: torch.Tensor, valid: torch.Tensor | None = None
                        ) -> dict[str, torch.Tensor]:
        """BCE gender, soft-label CE age and L1 of the expected age, each over the rows that have the label."""
        return _normalise(self.attribute_parts(gender_logit, age_logits, gender, age, age_group, valid))

    def distill_parts(self, gender_logit: torch.Tensor, age_logits: torch.Tensor, teacher_gender: torch.Tensor,
                      teacher_age: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(sum, count) of the distillation terms whose weight is > 0, over the crops the teacher answered
        (``teacher_*`` >= 0): BCE against its P(female), soft-label CE against a Gaussian around its age."""
        parts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if self.cfg.gender_distill > 0:
            bce = F.binary_cross_entropy_with_logits(gender_logit.float(), teacher_gender.float().clamp(0, 1),
                                                     reduction="none")
            parts["gender_distill"] = _masked_sum(bce, teacher_gender >= 0)
        if self.cfg.age_distill > 0:
            no_group = torch.full_like(teacher_age, -1, dtype=torch.long)
            dist = age_target_distribution(teacher_age, no_group, self.cfg.distill_age_sigma)
            cross_entropy = -(dist * F.log_softmax(age_logits.float(), dim=-1)).sum(-1)
            parts["age_distill"] = _masked_sum(cross_entropy, teacher_age >= 0)
        return parts

    def scene_parts(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
                    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        _, _, h, w = outputs["heatmap"].shape
        target = scene_targets(batch, h, w, self.stride, self.cfg.heatmap_alpha)
        valid = target["valid"]
        index = target["index"]
        if self.cfg.heatmap_target == "quality":
            if "ltrb" not in outputs:
                raise ValueError("loss.heatmap_target 'quality' needs arch v2 (a box at every cell to score)")
            parts = self.quality_parts(outputs, batch, valid)
        else:
            boxes = self.dense_box_parts(outputs, batch, valid) if "ltrb" in outputs else self.centre_box_parts(
                outputs, batch, target)
            parts = {"heatmap": focal_heatmap_parts(outputs["heatmap"], target["heatmap"], batch["has_boxes"]), **boxes}
        gender = _gather_rows(outputs["gender"].float(), index)[..., 0]
        age = _gather_rows(outputs["age"].float(), index)
        attr = self.attribute_parts(gender, age, batch["gender"], batch["age"], batch["age_group"], valid)
        return {**parts, **attr}

    def teacher_parts(self, outputs: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]
                      ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(sum, normaliser) of the detector distillation terms: the teacher's scores and boxes as soft targets."""
        with torch.no_grad():
            score = torch.sigmoid(teacher["heatmap"].float())
            goal = cell_boxes(teacher["ltrb"], self.stride)
        heat = F.binary_cross_entropy_with_logits(outputs["heatmap"].float(), score, reduction="none")
        pred = cell_boxes(outputs["ltrb"], self.stride)
        weight = (score * (score >= TEACHER_MIN_SCORE)).reshape(score.shape[0], -1)
        return {"teacher_heatmap": (heat.sum(), score.sum()),
                "teacher_box": ((giou_loss(pred, goal) * weight).sum(), weight.sum())}

    def centre_box_parts(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                         target: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Arch v1: (sum, count) of 1 - CIoU and the L1 offset at each person's centre cell."""
        valid, index = target["valid"], target["index"]
        offset = _gather_rows(outputs["offset"].float(), index)
        log_size = _gather_rows(outputs["size"].float(), index).clamp(-SIZE_LOG_LIMIT, SIZE_LOG_LIMIT)
        center = (target["cell"] + offset) * self.stride
        half = torch.exp(log_size) * self.stride / 2
        pred_boxes = torch.cat([center - half, center + half], -1)
        return {
            "box": _masked_sum(ciou_loss(pred_boxes, batch["boxes"].float()), valid),
            "offset": _masked_sum((offset - target["offset"]).abs().sum(-1), valid),
        }

    def _dense_boxes(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], valid: torch.Tensor
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Arch v2: every cell's decoded box [N, h*w, 4] and its dense targets (boxes, weights)."""
        _, _, h, w = outputs["ltrb"].shape
        target = dense_box_targets(batch["boxes"].float(), valid, h, w, self.stride,
                                   cell_weight=self.cfg.box_cell_weight)
        return cell_boxes(outputs["ltrb"], self.stride), target

    def dense_box_parts(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], valid: torch.Tensor
                        ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Arch v2: (weighted sum of 1 - GIoU over every core cell, sum of the weights) as in TTFNet, whose
        normaliser is the total weight (so a batch of many small people and one of a few large ones weigh alike)."""
        pred, target = self._dense_boxes(outputs, batch, valid)
        weight = target["weight"]
        parts = {"box": ((giou_loss(pred, target["boxes"]) * weight).sum(), weight.sum())}
        if "iou" in outputs:
            parts["iou"] = self.iou_branch_part(outputs["iou"], pred, target)
        return parts

    @staticmethod
    def iou_branch_part(iou_logit: torch.Tensor, pred: torch.Tensor, target: dict[str, torch.Tensor]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """PP-YOLO's IoU loss: (sum, count) of BCE between the IoU branch and the IoU of each core cell's own box
        with its person, over every core cell alike (the peak may land on any of them); the box is not pushed."""
        positive = target["weight"] > 0
        with torch.no_grad():
            quality = box_iou_pairs(pred, target["boxes"]).clamp(0, 1)
        logits = iou_logit.float().reshape(quality.shape)
        return _masked_sum(F.binary_cross_entropy_with_logits(logits, quality, reduction="none"), positive)

    def quality_parts(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], valid: torch.Tensor
                      ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Arch v2 with ``heatmap_target: quality``: the dense box loss as in ``dense_box_parts``, and the heatmap
        trained by Quality Focal Loss towards the IoU of each positive cell's own (detached) box with its person."""
        pred, target = self._dense_boxes(outputs, batch, valid)
        n, _, h, w = outputs["ltrb"].shape
        weight = target["weight"]
        positive = weight > 0
        with torch.no_grad():  # the score learns how good the box is; the box is not pushed by the score's loss
            quality = box_iou_pairs(pred, target["boxes"]) * positive
        return {
            "heatmap": quality_focal_parts(outputs["heatmap"], quality.reshape(n, 1, h, w),
                                           positive.reshape(n, 1, h, w), batch["has_boxes"]),
            "box": ((giou_loss(pred, target["boxes"]) * weight).sum(), weight.sum()),
        }

    def attribute_parts(self, gender_logit: torch.Tensor, age_logits: torch.Tensor, gender: torch.Tensor,
                        age: torch.Tensor, age_group: torch.Tensor, valid: torch.Tensor | None = None
                        ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(sum, count) of BCE gender, soft-label CE age and L1 of the expected age over the rows with the label."""
        valid = torch.ones_like(gender, dtype=torch.bool) if valid is None else valid
        gender_mask = valid & (gender >= 0)
        bce = F.binary_cross_entropy_with_logits(gender_logit.float(), gender.float().clamp(min=0), reduction="none")
        age_logits = age_logits.float()
        dist = age_target_distribution(age, age_group, self.cfg.age_sigma)
        age_mask = valid & ((age >= 0) | (age_group >= 0))
        cross_entropy = -(dist * F.log_softmax(age_logits, dim=-1)).sum(-1)
        exact_mask = valid & (age >= 0)
        l1 = (expected_age(age_logits) - age.float()).abs()
        return {
            "gender": _masked_sum(bce, gender_mask),
            "age": _masked_sum(cross_entropy, age_mask),
            "age_l1": _masked_sum(l1, exact_mask),
        }

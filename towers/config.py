"""The candidate tower's hyperparameters (:class:`TowerConfig`), apart from the Keras model so
that they can be read, checked and saved without building anything."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from towers.checks import check_field_types


@dataclass(frozen=True)
class TowerConfig:
    """Hyperparameters of the tower (run options such as epochs and seed live in TrainOptions).

    Attributes
    ----------
    embedding_dim : int
        Width of the input item-ID embeddings.
    token_dim : int
        Width of the token embeddings.
    output_dim : int
        Width of the user vector and of each item vector (softmax row).
    depth : int
        Number of ReLU layers. Widths halve towards ``output_dim`` as in the paper's Fig. 6:
        depth 2 is ``(2 * output_dim, output_dim)``. Depth 0 is one linear layer.
    max_history : int
        Watched items in the bag (the most recent ones).
    recent_history : int
        If > 0, the most recent ``recent_history`` watches are also averaged as a second bag
        (sharing the item embeddings), so the tower can weigh recency; 0 is the paper's single
        unordered bag.
    max_tokens_per_item : int
        Tokens (genres, decade, tags, title words) per watched item.
    use_tokens, use_demographics, use_example_age : bool
        Feature switches (the feature ablation).
    softmax : {"auto", "full", "sampled"}
        ``auto`` uses the full softmax up to ``full_softmax_max_items`` items, sampled above.
    num_negatives : int
        Sampled-softmax negatives per batch (drawn from the item frequency ** 0.75).
    max_examples_per_user : int or None
        Training examples kept per user.
    label_horizon : int
        1 predicts the next watch (the paper); ``h`` predicts a watch drawn from the next ``h``
        (see :func:`towers.examples.build_examples`).
    cold_examples_per_user : int
        Extra new-user examples per user: the first ``m <= 10`` items predict a later one (see
        :func:`towers.examples.build_examples`). 0 trains on next watches only.
    dropout : float
        Dropout on the concatenated features during training.
    history_dropout : float
        Probability that each watched item is dropped from the bag during training (a denoising
        regulariser, as the input dropout of Mult-VAE; Liang et al. 2018).
    age_knots : int
        0 feeds the example age as the paper does, ``(age, age ** 2)``. ``k >= 2`` adds ``k``
        piecewise-linear "hat" functions of the age (:func:`towers.features.age_hats`), so
        that the tower can learn what was watched at each time of the log rather than one
        quadratic trend; a request is answered with what was watched at its time (served at
        age 0: now).
    mask_seen : bool
        Leave the items a user had already watched (all of them, not only the bag) out of the
        softmax of each of their training examples, except the example's own label. A request
        excludes them from its answer anyway (:mod:`towers.losses`).
    """

    embedding_dim: int = 64
    token_dim: int = 32
    output_dim: int = 64
    depth: int = 2
    max_history: int = 50
    recent_history: int = 0
    max_tokens_per_item: int = 12
    use_tokens: bool = True
    use_demographics: bool = True
    use_example_age: bool = True
    softmax: str = "auto"
    num_negatives: int = 1000
    full_softmax_max_items: int = 50_000
    max_examples_per_user: int | None = 200
    label_horizon: int = 1
    cold_examples_per_user: int = 0
    dropout: float = 0.0
    history_dropout: float = 0.0
    mask_seen: bool = False
    age_knots: int = 0
    hidden_units: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        check_field_types(self)
        positive = ("embedding_dim", "token_dim", "output_dim", "max_history",
                    "max_tokens_per_item", "num_negatives", "full_softmax_max_items",
                    "label_horizon")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("depth", "cold_examples_per_user", "recent_history"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.age_knots == 1 or self.age_knots < 0:
            raise ValueError(f"age_knots must be 0 or >= 2, got {self.age_knots}")
        if self.age_knots and not self.use_example_age:
            raise ValueError("age_knots needs use_example_age=True")
        if self.recent_history > self.max_history:
            raise ValueError(
                f"recent_history ({self.recent_history}) must be <= max_history "
                f"({self.max_history})"
            )
        for name in ("dropout", "history_dropout"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        # Paper Fig. 6: depth 1 is 256 ReLU, depth 2 is 512 -> 256, ... (halving to the output).
        units = tuple(self.output_dim * 2 ** (self.depth - 1 - i) for i in range(self.depth))
        object.__setattr__(self, "hidden_units", units)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("hidden_units")
        return out

    def use_full_softmax(self, num_items: int) -> bool:
        if self.softmax not in ("auto", "full", "sampled"):
            raise ValueError(f"softmax must be 'auto', 'full' or 'sampled', got {self.softmax!r}")
        return self.softmax == "full" or (
            self.softmax == "auto" and num_items <= self.full_softmax_max_items
        )

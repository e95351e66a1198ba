"""The purchase-propensity model (Keras 3 Functional API).

Inputs (names are the ``user_sequences`` columns): one int32 ``(length,)`` array per sequence
feature, left-padded with 0, and ``aggregates`` float32 ``(len(dataset.AGGREGATES),)`` raw.

* Every categorical sequence feature gets its own ``Embedding(mask_zero=True)`` sized from the
  vocab version (``dataset.input_dims``); ``session_start`` (0/1, so 0 is not padding) gets an
  unmasked one. Concatenated, the masks combine: padding is skipped.
* Five recurrence flags per event, computed in the model from the id arrays (so scoring
  cannot compute them differently; ``recurrence_flags``): the event's item is in an open cart,
  was seen earlier, its category was carted earlier, the item is still in the basket at the
  cutoff, and the event is a view of such an item after its latest cart. An LSTM would
  otherwise have to learn id equality across positions from embeddings, which needs far more
  data than a pairwise comparison does; returning to a carted item is the classic purchase
  signal. Plus each event's estimated age at the cutoff (``event_age_days``, from the gap
  buckets and recency).
* The flags summed over events with exponential decay by age (1, 3, 7 and 30 days,
  ``decayed_counts``) go straight to the dense layers beside the sequence encoder.
* ``model.type: lstm``: a stack of LSTMs; ``transformer``: learned positions and self-attention
  blocks, pooled as the masked mean plus the newest event.
* Aggregates go through log1p and a ``Normalization`` fixed to the training rows' moments, so
  the model carries its own preprocessing: scoring feeds raw table columns.
* Dense layers, then the ``logit`` unit and a sigmoid ``propensity``. With class weights the
  logit's bias is corrected after training (``correct_prior``) so outputs are probabilities.
"""
from __future__ import annotations

import math
from typing import Sequence

from seqlake.config import ModelConfig
from seqlake.dataset import AGGREGATES, SEQUENCES

UNMASKED = ("session_start",)


def build_model(
    settings: ModelConfig,
    *,
    length: int,
    input_dims: dict[str, int],
    event_types: dict[str, int],
    aggregate_mean: Sequence[float],
    aggregate_variance: Sequence[float],
):
    import keras
    from keras import layers, ops

    inputs = {name: keras.Input((length,), dtype="int32", name=name) for name in SEQUENCES}
    inputs["aggregates"] = keras.Input((len(AGGREGATES),), dtype="float32", name="aggregates")

    embedded = []
    for name in SEQUENCES:
        width = settings.item_embedding_dim if name == "item" else settings.embedding_dim
        masked = name not in UNMASKED
        embedded.append(layers.Embedding(input_dims[name], width if masked else 2, mask_zero=masked,
                                         name=f"embed_{name}")(inputs[name]))
    flags = recurrence_flags(inputs["item"], inputs["category"], inputs["event_type"], length, event_types)
    embedded.append(flags)
    age = event_age_days(inputs["gap_bucket"], inputs["aggregates"][:, AGGREGATES.index("recency_days")])
    embedded.append(ops.log1p(age)[:, :, None])
    decayed = decayed_counts(flags, age, inputs["item"])
    x = layers.Concatenate(name="events")(embedded)
    x = layers.Dropout(settings.dropout, name="events_dropout")(x)

    if settings.type == "lstm":
        for i, units in enumerate(settings.lstm_units):
            x = layers.LSTM(units, return_sequences=True, name=f"lstm_{i}")(x)
        # The newest state, plus the masked max over all states: a direct path from every
        # event to the output, so one decisive event far back is not washed out.
        present = ops.cast(ops.not_equal(inputs["item"], 0), "float32")[:, :, None]
        peak = ops.max(x * present - 1e4 * (1.0 - present), axis=1)
        sequence = layers.Concatenate(name="pooled")([x[:, -1, :], peak])
    else:
        sequence = _transformer(settings, x, inputs["item"], length)

    aggregates = ops.log1p(ops.maximum(inputs["aggregates"], 0.0))
    aggregates = layers.Normalization(mean=list(aggregate_mean), variance=list(aggregate_variance),
                                      name="aggregates_normalised")(aggregates)
    h = layers.Concatenate(name="joined")([sequence, aggregates, decayed])
    for i, units in enumerate(settings.dense_units):
        h = layers.Dense(units, activation="relu", name=f"dense_{i}")(h)
        h = layers.Dropout(settings.dropout, name=f"dense_{i}_dropout")(h)
    logit = layers.Dense(1, name="logit")(h)
    propensity = layers.Activation("sigmoid", name="propensity")(logit)
    return keras.Model(inputs, propensity, name=f"seqlake_{settings.type}")


# Time scales (days) of the decayed flag counts: a day, half a week, a week, a month.
DECAY_DAYS = (1.0, 3.0, 7.0, 30.0)


def decayed_counts(flags, age, item):
    """(batch, flags x len(DECAY_DAYS)), log1p of: per flag and time scale tau, the sum over
    events of flag * exp(-age / tau). How much, and how recently, each recurrence happened, as a
    direct path to the dense layers: an LSTM learns a sum of decayed events slowly and noisily
    from ~20k rows (the test's oracle gap fell from 0.04-0.065 to 0.01-0.03 with it)."""
    from keras import ops

    present = ops.cast(ops.not_equal(item, 0), "float32")[:, :, None]
    sums = [ops.sum(flags * present * ops.exp(-age / tau)[:, :, None], axis=1) for tau in DECAY_DAYS]
    return ops.log1p(ops.concatenate(sums, axis=-1))


def event_age_days(gap_bucket, recency_days):
    """(batch, length) estimated days from each event to the cutoff: the newest event's is the
    exact recency; older ones add the gaps after them, each taken at 1.5 x its bucket's lower
    bound (buckets double, so one gap is off by at most a factor 1.5; sums average out)."""
    from keras import ops

    bucket = ops.cast(gap_bucket, "float32")
    seconds = ops.where(bucket >= 3.0, 1.5 * ops.power(2.0, bucket - 3.0), ops.where(bucket >= 2.0, 0.5, 0.0))
    after = ops.flip(ops.cumsum(ops.flip(seconds, axis=1), axis=1), axis=1) - seconds  # gaps after event i
    return recency_days[:, None] + after / 86_400.0


def recurrence_flags(item, category, event_type, length: int, event_types: dict[str, int]):
    """(batch, length, 5) floats per event, 0 on padding and null ids:

    * ``open_cart``: its item is in an open cart (carted earlier in the sequence, not removed or
      bought since);
    * ``seen``: its item was seen earlier;
    * ``category_carted``: its category was carted earlier;
    * ``in_basket``: its item is still in the basket at the cutoff (the item's latest cart in the
      whole sequence is after its latest removal or purchase);
    * ``basket_revisit``: it is a view of an item in the basket, after that item's latest cart.

    The first three say what was true when the event happened, the last two what is still true
    at the cutoff: a revisit of an item bought or removed since no longer points at a purchase.
    """
    from keras import ops

    earlier = ops.convert_to_tensor([[1.0 if j < i else 0.0 for j in range(length)] for i in range(length)])[None]
    position = ops.convert_to_tensor([float(j + 1) for j in range(length)])[None, None, :]

    def is_type(*names: str):
        hit = ops.zeros_like(ops.cast(event_type, "float32"))
        for name in names:
            hit = ops.maximum(hit, ops.cast(ops.equal(event_type, event_types.get(name, -1)), "float32"))
        return hit[:, None, :]  # [b, 1, j]

    def same(ids):
        return ops.cast(ops.equal(ids[:, :, None], ids[:, None, :]), "float32")  # [b, i, j]

    def known(ids):
        return ops.cast(ops.greater(ids, 1), "float32")  # not padding, not null

    carts, closes = is_type("cart"), is_type("remove_from_cart", "purchase")
    any_item = same(item)
    same_item = any_item * earlier  # [b, i, j < i]
    last_cart = ops.max(same_item * carts * position, axis=-1)
    last_close = ops.max(same_item * closes * position, axis=-1)
    open_cart = ops.cast(ops.greater(last_cart, last_close), "float32") * known(item)
    seen = ops.max(same_item, axis=-1) * known(item)
    category_carted = ops.max(same(category) * earlier * carts, axis=-1) * known(category)
    final_cart = ops.max(any_item * carts * position, axis=-1)
    final_close = ops.max(any_item * closes * position, axis=-1)
    in_basket = ops.cast(ops.greater(final_cart, final_close), "float32") * known(item)
    after_final_cart = ops.cast(ops.greater(position[:, 0, :], final_cart), "float32")
    basket_revisit = in_basket * is_type("view")[:, 0, :] * after_final_cart
    return ops.stack([open_cart, seen, category_carted, in_basket, basket_revisit], axis=-1)


def _transformer(settings: ModelConfig, x, item, length: int):
    from keras import layers, ops

    d = settings.transformer_dim
    x = layers.Dense(d, name="project")(x)
    positions = layers.Embedding(length, d, name="positions")(ops.arange(length))
    x = x + positions[None, :, :]
    present = ops.cast(ops.not_equal(item, 0), "float32")  # 1 for events, 0 for padding
    attend = ops.cast(present[:, None, :], "bool")
    for i in range(settings.transformer_layers):
        attended = layers.MultiHeadAttention(settings.transformer_heads, d // settings.transformer_heads or 1,
                                             dropout=settings.dropout, name=f"attention_{i}")(
            x, x, attention_mask=attend)
        x = layers.LayerNormalization(name=f"attention_norm_{i}")(x + attended)
        ff = layers.Dense(2 * d, activation="relu", name=f"ff_{i}_in")(x)
        ff = layers.Dense(d, name=f"ff_{i}_out")(ff)
        x = layers.LayerNormalization(name=f"ff_norm_{i}")(x + ff)
    mean = ops.sum(x * present[:, :, None], axis=1) / ops.maximum(ops.sum(present, axis=1, keepdims=True), 1.0)
    newest = x[:, -1, :]  # left padding: the last position is the newest event
    return layers.Concatenate(name="pooled")([mean, newest])


def correct_prior(model, positive_weight: float, negative_weight: float) -> None:
    """Undo class weighting in the output: a loss weighting positives by w1 and negatives by w0
    is minimised by odds w1/w0 times the true odds, so subtract log(w1/w0) from the logit bias."""
    layer = model.get_layer("logit")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, bias - math.log(positive_weight / negative_weight)])


def embedding_sizes(model) -> dict[str, int]:
    """Input sizes of the model's sequence embeddings (to clip newer vocab indices)."""
    return {name: model.get_layer(f"embed_{name}").input_dim for name in SEQUENCES}


def clip_to_model(batch: dict, sizes: dict[str, int]) -> dict:
    """Indices a model's vocabulary does not know (appended by a later vocab version) become 1,
    the unknown index; earlier indices are stable across versions, so nothing else changes."""
    import numpy as np

    out = dict(batch)
    for name, size in sizes.items():
        if name in out:
            out[name] = np.where(out[name] >= size, 1, out[name]).astype(np.int32)
    return out

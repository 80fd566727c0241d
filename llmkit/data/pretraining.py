"""Pretraining data: documents -> token ids -> fixed-length blocks, and the collators that batch them.

Every document is tokenized without special tokens and closed with the
separator of the objective (CLM: `doc EOS`; MLM: `CLS doc SEP`, as BERT
inputs look). The documents of a split are concatenated into one token stream
and cut into `block_size` blocks; only the split's last block can be shorter,
so no token is dropped or repeated, and the only padding in training is that
of the one batch holding the short block. `transformers`' `group_texts`
recipe drops the remainder of every map batch instead.

MLM validation blocks are masked once with a fixed seed, so every evaluation
scores the same positions and validation losses are comparable across steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from llmkit.data.cache import cached_dataset, files_digest, tokenizer_digest
from llmkit.data.loading import as_text, load_raw_splits, refuse_non_text, require_columns
from llmkit.errors import UserError

IGNORE_INDEX = -100
SPLIT_KEYS = {"train": "train_file", "validation": "validation_file", "test": "test_file"}


@dataclass
class MaskingSettings:
    """MLM masking: the share of tokens chosen, and of those the share replaced by the mask token / a random
    token (the rest stay unchanged); optionally whole words at a time."""

    probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    whole_word: bool = False


@dataclass
class PretrainData:
    splits: dict
    stats: dict
    from_cache: bool
    seconds: float
    label_names: list = field(default_factory=list)


class LazySplits:
    """Raw text splits, read from disk only when first needed (a cache hit never reads them)."""

    def __init__(self, data_cfg: Any, seed: int, documents: str):
        self.data_cfg, self.seed, self.documents = data_cfg, seed, documents
        self._splits: dict | None = None

    def get(self) -> dict:
        if self._splits is None:
            splits = load_raw_splits(self.data_cfg, self.seed, text_sample_by=self.documents)
            require_columns(splits, self.data_cfg, ["text_column"])
            refuse_non_text(splits, self.data_cfg, ["text_column"])
            self._splits = splits
        return self._splits

    def train_texts(self) -> Callable[[], Iterable[list[str]]]:
        """Batches of training texts, for tokenizer training."""
        column = self.data_cfg.text_column
        return lambda: ([as_text(t) for t in batch[column]] for batch in self.get()["train"].iter(batch_size=1000))

    def key_parts(self) -> dict:
        """What identifies the raw text: file contents (or hub dataset) and how it is read and split."""
        cfg = self.data_cfg
        return {"files": {key: files_digest(getattr(cfg, key)) for key in SPLIT_KEYS.values()},
                "hub": [cfg.dataset_name, cfg.dataset_config, cfg.train_split, cfg.eval_split, cfg.test_split]
                if cfg.dataset_name else None,
                "format": cfg.format, "column_map": cfg.column_map, "text_column": cfg.text_column,
                "documents": self.documents, "validation_split": cfg.validation_split,
                "max_train_samples": cfg.max_train_samples, "max_eval_samples": cfg.max_eval_samples,
                "seed": self.seed}


def separators(tokenizer: Any, objective: str) -> tuple[list[int], list[int]]:
    """Token ids put before and after every document: MLM [CLS] doc [SEP]; CLM doc <eos>."""
    if objective == "mlm":
        sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        if sep is None:
            raise UserError("tokenizer: the tokenizer has neither a sep_token nor an eos_token to separate documents "
                            "for masked-LM pretraining; use a BERT-style tokenizer or tokenizer.train.")
        return ([tokenizer.cls_token_id] if tokenizer.cls_token_id is not None else []), [sep]
    if tokenizer.eos_token_id is None:
        raise UserError("tokenizer: the tokenizer has no eos_token to end each document for causal-LM "
                        "pretraining; use a tokenizer with one, or tokenizer.train (which adds <|endoftext|>).")
    return [], [tokenizer.eos_token_id]


def tokenize_documents(ds: Any, tokenizer: Any, column: str, objective: str, whole_word: bool,
                       num_proc: int | None):
    """One row per non-empty document: its token ids between the objective's separators (+ word starts)."""
    before, after = separators(tokenizer, objective)

    def encode(batch):
        texts = [text for text in map(as_text, batch[column]) if text.strip()]
        if not texts:  # transformers 5 tokenizers raise on an empty batch
            return {"input_ids": [], **({"word_start": []} if whole_word else {})}
        enc = tokenizer(texts, add_special_tokens=False)
        out = {"input_ids": [before + ids + after for ids in enc["input_ids"]]}
        if whole_word:
            out["word_start"] = [[1] * len(before) + _word_starts(enc.word_ids(i)) + [1] * len(after)
                                 for i in range(len(texts))]
        return out

    return ds.map(encode, batched=True, remove_columns=ds.column_names, num_proc=num_proc,
                  desc="tokenizing", keep_in_memory=True)


def _word_starts(word_ids: list[int | None]) -> list[int]:
    """1 where a token begins a new word (per the tokenizer's pre-tokenizer), else 0."""
    starts, previous = [], object()
    for w in word_ids:
        starts.append(int(w is None or w != previous))
        previous = w
    return starts


def pack_blocks(tokenized: Any, block_size: int):
    """Concatenate every row's token ids (and word starts) and cut them into `block_size` blocks; the last
    block holds the remainder. Done on the Arrow buffers, so a whole split is cut at once, nothing dropped."""
    import datasets
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(tokenized) == 0:  # no document at all (the caller reports the empty split)
        return datasets.Dataset.from_dict({"input_ids": []}), 0
    columns = {}
    n = 0
    for name in tokenized.column_names:
        values = pc.list_flatten(tokenized.data.column(name).combine_chunks())
        n = len(values)
        offsets = np.append(np.arange(0, n, block_size, dtype=np.int32), np.int32(n)) if n else np.zeros(1, np.int32)
        columns[name] = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values.cast(pa.int32()))
    return datasets.Dataset(datasets.table.InMemoryTable(pa.table(columns))), n


def mask_once(blocks: Any, tokenizer: Any, masking: MaskingSettings, seed: int):
    """MLM validation data with the masking applied once (fixed seed): columns input_ids and labels."""
    import datasets
    import torch

    collator = BlockCollator(tokenizer, "mlm", masking)
    generator = torch.Generator().manual_seed(seed)
    ids_out, labels_out = [], []
    for start in range(0, len(blocks), 256):
        rows = blocks[start:start + 256]
        features = [dict(zip(rows, values)) for values in zip(*rows.values())]
        batch = collator(features, generator=generator)
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
            n = int(mask.sum())
            ids_out.append(ids[:n].tolist())
            labels_out.append(labels[:n].tolist())
    return datasets.Dataset.from_dict({"input_ids": ids_out, "labels": labels_out})


def prepare_pretrain_data(data_cfg: Any, tokenizer: Any, raw: LazySplits, objective: str, block_size: int,
                          masking: MaskingSettings, seed: int) -> PretrainData:
    """Tokenize, pack and (MLM) fix the validation masks; cached on disk keyed on data + tokenizer + settings."""
    start = time.perf_counter()
    parts = {"kind": "pretrain", "raw": raw.key_parts(), "tokenizer": tokenizer_digest(tokenizer),
             "objective": objective, "block_size": block_size,
             "masking": vars(masking) if objective == "mlm" else None}

    def build():
        splits, stats = {}, {}
        for name, ds in raw.get().items():
            tokenized = tokenize_documents(ds, tokenizer, data_cfg.text_column, objective,
                                           masking.whole_word,
                                           data_cfg.preprocessing_num_workers)
            blocks, n_tokens = pack_blocks(tokenized, block_size)
            if n_tokens == 0:
                raise UserError(f"data.{SPLIT_KEYS[name]}: the {name} text is empty (no non-blank document). "
                                "Check the file and data.text_column.")
            if objective == "mlm" and name != "train":
                blocks = mask_once(blocks, tokenizer, masking, seed)
            splits[name] = blocks
            last = n_tokens - (len(blocks) - 1) * block_size
            stats[name] = {"documents": len(tokenized), "tokens": n_tokens, "blocks": len(blocks),
                           "last_block_tokens": last, "max_tokens": min(block_size, n_tokens)}
        import datasets

        return datasets.DatasetDict(splits), {"stats": stats}

    dsd, meta, hit = cached_dataset(data_cfg.cache, data_cfg.cache_dir, parts, build)
    return PretrainData(splits=dict(dsd), stats=meta["stats"], from_cache=hit, seconds=time.perf_counter() - start)


class BlockCollator:
    """Batches packed blocks. Pads only when a batch holds a split's short last block (counted in
    `padding_fraction`). Labels: CLM the input ids (shifted inside the loss); MLM a dynamic masking of the
    non-special tokens; pre-masked (validation) rows keep their labels."""

    def __init__(self, tokenizer: Any, objective: str, masking: MaskingSettings | None = None):
        import torch
        from transformers import DataCollatorForLanguageModeling

        self.objective = objective
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.masking = masking or MaskingSettings()
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.mask_id = tokenizer.mask_token_id
        self.vocab_size = len(tokenizer)
        self.hf = None
        if objective == "mlm":
            if tokenizer.mask_token is None:
                raise UserError("pretrain.objective: mlm needs a tokenizer with a mask token, and this one has none. "
                                "Use a BERT-style tokenizer, or tokenizer.train (adds [MASK]).")
            if not self.masking.whole_word:
                # transformers' masking (80/10/10 by default); its whole-word mode forces 100 % [MASK] and
                # needs offset mappings, which packed blocks no longer have, hence llmkit's own below.
                self.hf = DataCollatorForLanguageModeling(
                    tokenizer, mlm=True, mlm_probability=self.masking.probability,
                    mask_replace_prob=self.masking.mask_replace_prob,
                    random_replace_prob=self.masking.random_replace_prob)
        self.real = self.total = 0
        self.counting = True  # off while the Trainer evaluates: the padding figure is the training batches'

    def _pad(self, rows: list, value: int):
        import torch

        width = max(len(r) for r in rows)
        out = torch.full((len(rows), width), value, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, :len(r)] = torch.as_tensor(r, dtype=torch.long)
        return out

    def __call__(self, features: list[dict], generator: Any = None) -> dict:
        import torch

        ids = self._pad([f["input_ids"] for f in features], self.pad_id)
        lengths = torch.tensor([len(f["input_ids"]) for f in features])
        attention = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
        if self.counting:
            self.real += int(lengths.sum())
            self.total += ids.numel()
        batch = {"input_ids": ids, "attention_mask": attention}
        if "labels" in features[0]:
            batch["labels"] = self._pad([f["labels"] for f in features], IGNORE_INDEX)
        elif self.objective == "clm":
            batch["labels"] = ids.masked_fill(attention == 0, IGNORE_INDEX)  # pad == eos must still train the eos
        else:
            special = torch.isin(ids, self.special_ids) | (attention == 0)
            if self.masking.whole_word:
                starts = self._pad([f["word_start"] for f in features], 1).bool()
                batch["input_ids"], batch["labels"] = self.mask_whole_words(ids, special, starts, generator)
            else:
                self.hf.generator = generator  # None: the global RNG (seeded and checkpointed by the Trainer)
                batch["input_ids"], batch["labels"] = self.hf.torch_mask_tokens(ids.clone(),
                                                                                special_tokens_mask=special)
        return batch

    def mask_whole_words(self, ids, special, word_start, generator=None):
        """Choose whole words with the masking probability, then replace each of their tokens by the mask token /
        a random token / itself with the configured shares (BERT's whole-word masking keeps the 80/10/10 split)."""
        import torch

        m = self.masking
        positions = torch.arange(ids.shape[1]).expand_as(ids)
        draw = torch.rand(ids.shape, generator=generator) < m.probability
        # each token follows the draw of the most recent word start (a block may begin mid-word: not chosen)
        last_start = torch.cummax(torch.where(word_start & ~special, positions, -1), dim=1).values
        chosen = draw.gather(1, last_start.clamp(min=0)) & (last_start >= 0) & ~special
        labels = ids.masked_fill(~chosen, IGNORE_INDEX)
        u = torch.rand(ids.shape, generator=generator)
        to_mask = chosen & (u < m.mask_replace_prob)
        to_random = chosen & (u >= m.mask_replace_prob) & (u < m.mask_replace_prob + m.random_replace_prob)
        out = ids.masked_fill(to_mask, self.mask_id)
        random_ids = torch.randint(self.vocab_size, ids.shape, generator=generator)
        out = torch.where(to_random, random_ids, out)
        return out, labels

    @property
    def padding_fraction(self) -> float:
        return 1 - self.real / self.total if self.total else 0.0

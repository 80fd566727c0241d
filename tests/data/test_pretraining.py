"""Pretraining data: tokenizing documents, packing blocks, collating (CLM labels, MLM masking), caching."""

from __future__ import annotations

import math

import pytest
import torch

from llmkit.config.sections import DataConfig
from llmkit.data.pretraining import (
    IGNORE_INDEX,
    BlockCollator,
    LazySplits,
    MaskingSettings,
    _word_starts,
    mask_once,
    pack_blocks,
    prepare_pretrain_data,
    separators,
    tokenize_documents,
)
from llmkit.errors import UserError
from tests.conftest import build_chat_tokenizer

# Documents of varied lengths; blank and whitespace-only lines are not documents.
DOCS = [
    "the film was great",
    "",
    "   ",
    "a",
    "really quite wonderful and lovely story, the acting was charming and the music delightful",
    "\t",
    "plot",
    "the music felt dull and tedious and the acting was poor and clumsy and boring",
    "it was superb",
]



@pytest.fixture(scope="module")
def wp_tok(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def bpe_tok():
    return build_chat_tokenizer(None)


def text_dataset(texts):
    import datasets

    return datasets.Dataset.from_dict({"text": list(texts)})


def expected_stream(tok, objective: str, texts, whole_word: bool = False):
    """Hand-made token stream: every non-blank document between the objective's separators (+ word starts)."""
    ids, starts = [], []
    for text in texts:
        if not text.strip():
            continue
        enc = tok(text, add_special_tokens=False)
        if objective == "clm":
            ids += enc["input_ids"] + [tok.eos_token_id]
            starts += _word_starts(enc.word_ids()) + [1]
        else:
            ids += [tok.cls_token_id] + enc["input_ids"] + [tok.sep_token_id]
            starts += [1] + _word_starts(enc.word_ids()) + [1]
    return ids, starts


# ---------------------------------------------------------------- separators, tokenizing, packing


def test_separators_per_objective(wp_tok, bpe_tok):
    assert separators(wp_tok, "mlm") == ([wp_tok.cls_token_id], [wp_tok.sep_token_id])
    assert separators(bpe_tok, "clm") == ([], [bpe_tok.eos_token_id])
    with pytest.raises(UserError, match="eos_token"):
        separators(wp_tok, "clm")  # the WordPiece tokenizer has no EOS


@pytest.mark.parametrize("objective", ["clm", "mlm"])
@pytest.mark.parametrize("whole_word", [False, True])
def test_tokenize_documents_skips_blank_lines_and_adds_separators(wp_tok, bpe_tok, objective, whole_word):
    tok = bpe_tok if objective == "clm" else wp_tok
    tokenized = tokenize_documents(text_dataset(DOCS), tok, "text", objective, whole_word, None)
    docs = [d for d in DOCS if d.strip()]
    assert len(tokenized) == len(docs)
    assert set(tokenized.column_names) == ({"input_ids", "word_start"} if whole_word else {"input_ids"})
    for row, doc in zip(tokenized, docs):
        ids, starts = expected_stream(tok, objective, [doc])
        assert row["input_ids"] == ids
        if whole_word:
            assert row["word_start"] == starts


@pytest.mark.parametrize("objective", ["clm", "mlm"])
@pytest.mark.parametrize("block_size", [1, 3, 7, 64, 10_000])
def test_pack_blocks_neither_drops_nor_duplicates_tokens(wp_tok, bpe_tok, objective, block_size):
    tok = bpe_tok if objective == "clm" else wp_tok
    docs = DOCS * 2
    tokenized = tokenize_documents(text_dataset(docs), tok, "text", objective, True, None)
    ids, starts = expected_stream(tok, objective, docs)
    assert len(ids) > 64  # so that 64 cuts the stream and 10_000 does not

    blocks, n = pack_blocks(tokenized, block_size)

    assert n == len(ids)
    assert len(blocks) == math.ceil(len(ids) / block_size)
    rows = blocks["input_ids"]
    assert [t for row in rows for t in row] == ids
    assert all(len(row) == block_size for row in rows[:-1])
    assert len(rows[-1]) == len(ids) - (len(rows) - 1) * block_size > 0
    # word starts are packed in lockstep with the ids
    word_rows = blocks["word_start"]
    assert [len(r) for r in word_rows] == [len(r) for r in rows]
    assert [s for row in word_rows for s in row] == starts


def test_pack_blocks_without_word_starts_and_exact_multiple(bpe_tok):
    tokenized = tokenize_documents(text_dataset(DOCS), bpe_tok, "text", "clm", False, None)
    ids, _ = expected_stream(bpe_tok, "clm", DOCS)
    for block_size in (len(ids), len(ids) // 2 if len(ids) % 2 == 0 else (len(ids) - 1) // 2):
        blocks, n = pack_blocks(tokenized, block_size)
        assert blocks.column_names == ["input_ids"]
        assert [t for row in blocks["input_ids"] for t in row] == ids
        assert all(len(r) == block_size for r in blocks["input_ids"][:-1])


def test_tokenize_documents_survives_a_map_batch_of_only_blank_lines(bpe_tok):
    # 1000 blank lines fill the first map batch (datasets' default batch size); the text after them is a document
    tokenized = tokenize_documents(text_dataset([""] * 1000 + ["the film was great"]), bpe_tok, "text", "clm",
                                   False, None)
    assert tokenized["input_ids"] == [expected_stream(bpe_tok, "clm", ["the film was great"])[0]]


# ---------------------------------------------------------------- word starts


def test_word_starts_marks_first_token_of_each_word():
    assert _word_starts([]) == []
    assert _word_starts([0]) == [1]
    assert _word_starts([0, 0, 0, 1, 2, 2]) == [1, 0, 0, 1, 1, 0]
    # special tokens (no word) always count as a start, and so does the word after them
    assert _word_starts([None, 0, 0, None, None, 0, 1, 1]) == [1, 1, 0, 1, 1, 1, 1, 0]


def test_word_starts_follow_the_tokenizers_word_ids(wp_tok):
    enc = wp_tok("wonderfully dull the the lovely", add_special_tokens=False)
    tokens, starts = enc.tokens(), _word_starts(enc.word_ids())
    assert any(t.startswith("##") for t in tokens)  # at least one word split into pieces
    # WordPiece: a piece continues a word exactly when it starts with ##
    assert starts == [int(not t.startswith("##")) for t in tokens]
    assert sum(starts) == 5  # five words, the repeated "the the" being two


# ---------------------------------------------------------------- CLM collation


def test_clm_collator_keeps_eos_labels_when_pad_is_eos():
    tok = build_chat_tokenizer(None)
    tok.pad_token = tok.eos_token
    eos = tok.eos_token_id
    assert tok.pad_token_id == eos
    a = [10, 11, eos, 12, 13, eos, 14, 15]
    b = [eos, 20, 21, 22, eos, 23, 24, eos]
    short = [30, eos, 31]
    collator = BlockCollator(tok, "clm")
    batch = collator([{"input_ids": a}, {"input_ids": b}, {"input_ids": short}])

    assert batch["input_ids"].tolist() == [a, b, short + [eos] * 5]
    assert batch["attention_mask"].tolist() == [[1] * 8, [1] * 8, [1] * 3 + [0] * 5]
    # the EOS tokens inside the blocks are trained; only the padding is ignored
    assert batch["labels"].tolist() == [a, b, short + [IGNORE_INDEX] * 5]
    assert collator.padding_fraction == pytest.approx(5 / 24)

    # full batches add no padding; the fraction is over everything collated so far
    collator([{"input_ids": a}, {"input_ids": b}])
    assert collator.padding_fraction == pytest.approx(5 / 40)


def test_clm_collator_without_padding(bpe_tok):
    collator = BlockCollator(bpe_tok, "clm")
    assert collator.padding_fraction == 0.0
    rows = [[5, 6, 7, 8], [9, 10, 11, 12]]
    batch = collator([{"input_ids": r} for r in rows])
    assert batch["labels"].tolist() == rows
    assert batch["attention_mask"].tolist() == [[1] * 4] * 2
    assert collator.padding_fraction == 0.0


def test_collator_keeps_labels_of_pre_masked_rows(wp_tok):
    collator = BlockCollator(wp_tok, "mlm")
    features = [{"input_ids": [2, 4, 9, 3], "labels": [-100, 7, -100, -100]},
                {"input_ids": [2, 4], "labels": [-100, 8]}]
    batch = collator(features)
    assert batch["input_ids"].tolist() == [[2, 4, 9, 3], [2, 4, wp_tok.pad_token_id, wp_tok.pad_token_id]]
    assert batch["labels"].tolist() == [[-100, 7, -100, -100], [-100, 8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


# ---------------------------------------------------------------- MLM masking statistics


def mlm_rows(tok, n_rows=256, width=128, seed=0, whole_word=False):
    """Random non-special ids with [CLS]/[SEP] sprinkled in and a few short rows (padding); with word starts
    (words of 1-3 tokens) when `whole_word`; some rows begin mid-word (word_start 0)."""
    g = torch.Generator().manual_seed(seed)
    special = set(tok.all_special_ids)
    normal = torch.tensor([i for i in range(len(tok)) if i not in special])
    features = []
    for r in range(n_rows):
        length = width if r % 16 else int(torch.randint(20, width, (1,), generator=g))
        ids = normal[torch.randint(len(normal), (length,), generator=g)].tolist()
        starts = []
        while len(starts) < length:
            n = int(torch.randint(1, 4, (1,), generator=g))
            starts += [1] + [0] * (n - 1)
        starts = starts[:length]
        if r % 5 == 0:
            starts[0] = 0  # the block begins in the middle of a word
        for p in torch.randint(length, (6,), generator=g).tolist():
            ids[p] = tok.sep_token_id if p % 2 else tok.cls_token_id
            starts[p] = 1
            if p + 1 < length:
                starts[p + 1] = 1  # a document starts after a separator
        ids[0] = tok.cls_token_id if r % 5 else ids[0]
        starts[0] = 1 if r % 5 else starts[0]
        feature = {"input_ids": ids}
        if whole_word:
            feature["word_start"] = starts
        features.append(feature)
    return features


def masking_shares(tok, features, batch):
    ids = BlockCollator(tok, "clm")(features)["input_ids"]  # the unmasked ids, padded
    attention = batch["attention_mask"].bool()
    labels, out = batch["labels"], batch["input_ids"]
    special = torch.isin(ids, torch.tensor(tok.all_special_ids)) | ~attention
    chosen = labels != IGNORE_INDEX
    # specials and padding are never chosen and never changed
    assert not (chosen & special).any()
    assert torch.equal(out[special], ids[special])
    # unchosen tokens are unchanged; chosen ones are labelled with their original id
    assert torch.equal(out[~chosen], ids[~chosen])
    assert torch.equal(labels[chosen], ids[chosen])
    assert int(out.max()) < len(tok) and int(out.min()) >= 0
    n_chosen = int(chosen.sum())
    masked = chosen & (out == tok.mask_token_id)
    unchanged = chosen & (out == labels)
    random = chosen & ~masked & ~unchanged
    return {"chosen": n_chosen / int((~special).sum()), "mask": int(masked.sum()) / n_chosen,
            "unchanged": int(unchanged.sum()) / n_chosen, "random": int(random.sum()) / n_chosen,
            "n_chosen": n_chosen, "ids": ids, "chosen_mask": chosen, "special": special}


def assert_80_10_10(shares):
    assert shares["n_chosen"] > 3000
    assert shares["mask"] == pytest.approx(0.80, abs=0.02)
    assert shares["unchanged"] == pytest.approx(0.10, abs=0.02)
    assert shares["random"] == pytest.approx(0.10, abs=0.02)


def test_mlm_masking_statistics_default(wp_tok):
    features = mlm_rows(wp_tok)
    collator = BlockCollator(wp_tok, "mlm")
    assert collator.hf is not None  # transformers' masking
    torch.manual_seed(0)
    batch = collator(features)
    shares = masking_shares(wp_tok, features, batch)
    assert shares["chosen"] == pytest.approx(0.15, abs=0.01)
    assert_80_10_10(shares)


def test_mlm_masking_follows_custom_settings(wp_tok):
    features = mlm_rows(wp_tok, n_rows=128)
    torch.manual_seed(1)
    batch = BlockCollator(wp_tok, "mlm", MaskingSettings(probability=0.3, mask_replace_prob=1.0,
                                                         random_replace_prob=0.0))(features)
    shares = masking_shares(wp_tok, features, batch)
    assert shares["chosen"] == pytest.approx(0.30, abs=0.015)
    assert shares["mask"] == 1.0


def word_spans(starts, special):
    """(start, end) of every word of a row: a word runs from a start to the next start or special token."""
    spans, begin = [], None
    for i, (s, sp) in enumerate(zip(starts, special)):
        if sp or s:
            if begin is not None:
                spans.append((begin, i))
            begin = None if sp else i
    if begin is not None:
        spans.append((begin, len(starts)))
    return spans


def test_mlm_whole_word_masking_statistics(wp_tok):
    features = mlm_rows(wp_tok, whole_word=True)
    collator = BlockCollator(wp_tok, "mlm", MaskingSettings(whole_word=True))
    assert collator.hf is None  # llmkit's own whole-word masking
    torch.manual_seed(0)
    batch = collator(features)
    shares = masking_shares(wp_tok, features, batch)
    assert_80_10_10(shares)

    chosen, special = shares["chosen_mask"], shares["special"]
    words = chosen_words = 0
    for r, f in enumerate(features):
        row_chosen = chosen[r].tolist()
        row_special = special[r, :len(f["input_ids"])].tolist()
        # tokens before the first word start of a row (a block beginning mid-word) are never chosen
        first = next(i for i, (s, sp) in enumerate(zip(f["word_start"], row_special)) if s or sp)
        assert not any(row_chosen[:first])
        for begin, end in word_spans(f["word_start"], row_special):
            if begin < first:
                continue
            flags = row_chosen[begin:end]
            assert len(set(flags)) == 1, f"row {r}: word {begin}:{end} partly masked {flags}"
            words += 1
            chosen_words += flags[0]
    assert words > 10_000
    assert chosen_words / words == pytest.approx(0.15, abs=0.01)


def test_mlm_masking_uses_the_global_rng_without_a_generator(wp_tok):
    for settings in (MaskingSettings(), MaskingSettings(whole_word=True)):
        feats = mlm_rows(wp_tok, n_rows=8, whole_word=settings.whole_word)
        collator = BlockCollator(wp_tok, "mlm", settings)
        torch.manual_seed(3)
        first = collator(feats)
        torch.manual_seed(3)
        again = collator(feats)
        other = collator(feats)
        assert torch.equal(first["labels"], again["labels"]) and torch.equal(first["input_ids"], again["input_ids"])
        assert not torch.equal(first["labels"], other["labels"])


def test_mlm_needs_a_mask_token(bpe_tok):
    with pytest.raises(UserError, match="mask token"):
        BlockCollator(bpe_tok, "mlm")


# ---------------------------------------------------------------- mask_once


@pytest.mark.parametrize("whole_word", [False, True])
def test_mask_once_is_deterministic_per_seed(wp_tok, whole_word):
    tokenized = tokenize_documents(text_dataset(DOCS * 40), wp_tok, "text", "mlm", whole_word, None)
    blocks, n = pack_blocks(tokenized, 7)
    assert len(blocks) > 256 and n % 7  # several collator batches, and a short last block
    masking = MaskingSettings(whole_word=whole_word)

    torch.manual_seed(0)
    first = mask_once(blocks, wp_tok, masking, seed=7)
    torch.manual_seed(1)  # the global RNG plays no part
    again = mask_once(blocks, wp_tok, masking, seed=7)
    other = mask_once(blocks, wp_tok, masking, seed=8)

    assert first.column_names == ["input_ids", "labels"]
    assert first["input_ids"] == again["input_ids"] and first["labels"] == again["labels"]
    assert first["labels"] != other["labels"]
    lengths = [len(r) for r in blocks["input_ids"]]
    assert [len(r) for r in first["input_ids"]] == lengths
    assert [len(r) for r in first["labels"]] == lengths
    labelled = [t for row in first["labels"] for t in row if t != IGNORE_INDEX]
    assert 0.10 < len(labelled) / n < 0.20
    # labels hold the original ids where set
    for orig, labels in zip(blocks["input_ids"], first["labels"]):
        assert all(lab in (IGNORE_INDEX, o) for o, lab in zip(orig, labels))


# ---------------------------------------------------------------- prepare_pretrain_data


def data_config(tmp_path, train_lines, validation_lines=None) -> DataConfig:
    (tmp_path / "train.txt").write_text("\n".join(train_lines) + "\n")
    validation = None
    if validation_lines is not None:
        (tmp_path / "valid.txt").write_text("\n".join(validation_lines) + "\n")
        validation = str(tmp_path / "valid.txt")
    cfg = DataConfig(train_file=str(tmp_path / "train.txt"), validation_file=validation, format="text")
    assert cfg.validate() == []
    return cfg


def prepare(cfg, tok, objective, block_size, documents="line", masking=None):
    return prepare_pretrain_data(cfg, tok, LazySplits(cfg, 0, documents), objective, block_size,
                                 masking or MaskingSettings(), seed=0)


def check_stats(stats, blocks, tok, objective, lines, block_size):
    ids, _ = expected_stream(tok, objective, lines)
    n_blocks = math.ceil(len(ids) / block_size)
    assert stats == {"documents": sum(bool(x.strip()) for x in lines), "tokens": len(ids), "blocks": n_blocks,
                     "last_block_tokens": len(ids) - (n_blocks - 1) * block_size,
                     "max_tokens": min(block_size, len(ids))}
    assert len(blocks) == stats["blocks"]
    lengths = [len(r) for r in blocks["input_ids"]]
    assert sum(lengths) == stats["tokens"] and lengths[-1] == stats["last_block_tokens"]
    return ids


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_prepare_pretrain_data_stats_match_packed_data(tmp_path, wp_tok, bpe_tok, objective):
    tok = bpe_tok if objective == "clm" else wp_tok
    train, valid = DOCS * 3, DOCS[:5]
    cfg = data_config(tmp_path, train, valid)
    data = prepare(cfg, tok, objective, 16)

    assert not data.from_cache
    assert set(data.splits) == set(data.stats) == {"train", "validation"}
    ids = check_stats(data.stats["train"], data.splits["train"], tok, objective, train, 16)
    assert [t for row in data.splits["train"]["input_ids"] for t in row] == ids
    valid_ids = check_stats(data.stats["validation"], data.splits["validation"], tok, objective, valid, 16)
    if objective == "clm":
        assert data.splits["validation"].column_names == ["input_ids"]
        assert [t for row in data.splits["validation"]["input_ids"] for t in row] == valid_ids
    else:  # validation masked once: labels fixed
        assert data.splits["validation"].column_names == ["input_ids", "labels"]
        labels = [t for row in data.splits["validation"]["labels"] for t in row]
        assert any(t != IGNORE_INDEX for t in labels)
        assert all(lab in (IGNORE_INDEX, o) for o, lab in zip(valid_ids, labels))


def test_prepare_pretrain_data_cache(tmp_path, bpe_tok):
    lines = DOCS * 2
    cfg = data_config(tmp_path, lines, DOCS[3:])
    first = prepare(cfg, bpe_tok, "clm", 8)
    again = prepare(cfg, bpe_tok, "clm", 8)
    assert (first.from_cache, again.from_cache) == (False, True)
    assert again.stats == first.stats
    for name in first.splits:
        assert again.splits[name][:] == first.splits[name][:]

    other_size = prepare(cfg, bpe_tok, "clm", 9)
    assert not other_size.from_cache
    assert other_size.stats["train"]["blocks"] == math.ceil(first.stats["train"]["tokens"] / 9)

    (tmp_path / "train.txt").write_text("\n".join(lines + ["one more line"]) + "\n")
    changed = prepare(cfg, bpe_tok, "clm", 8)
    assert not changed.from_cache
    assert changed.stats["train"]["documents"] == first.stats["train"]["documents"] + 1
    assert prepare(cfg, bpe_tok, "clm", 8).from_cache


def test_prepare_pretrain_data_mlm_cache_key_includes_masking(tmp_path, wp_tok):
    cfg = data_config(tmp_path, DOCS, DOCS)
    first = prepare(cfg, wp_tok, "mlm", 8)
    assert prepare(cfg, wp_tok, "mlm", 8).from_cache
    other = prepare(cfg, wp_tok, "mlm", 8, masking=MaskingSettings(probability=0.3))
    assert not other.from_cache
    assert other.splits["validation"]["labels"] != first.splits["validation"]["labels"]


def test_prepare_pretrain_data_blank_train_file_is_a_user_error(tmp_path, bpe_tok):
    cfg = data_config(tmp_path, ["", "   ", "\t", ""])
    with pytest.raises(UserError, match=r"data\.train_file"):
        prepare(cfg, bpe_tok, "clm", 8)


def test_prepare_pretrain_data_documents_by_paragraph(tmp_path, bpe_tok):
    lines = ["the film was great", "and the acting was superb", "", "a boring plot", "", "", "",
             "it felt dull", "really", "", "   ", "", "the music"]
    cfg = data_config(tmp_path, lines)
    by_line = prepare(cfg, bpe_tok, "clm", 8)
    by_paragraph = prepare(cfg, bpe_tok, "clm", 8, documents="paragraph")
    assert by_line.stats["train"]["documents"] == 6
    assert by_paragraph.stats["train"]["documents"] == 4
    assert not by_paragraph.from_cache  # a different way of reading the text is a different cache entry
    # one EOS per document
    eos = bpe_tok.eos_token_id
    for data in (by_line, by_paragraph):
        stream = [t for row in data.splits["train"]["input_ids"] for t in row]
        assert stream.count(eos) == data.stats["train"]["documents"]
        assert stream[-1] == eos

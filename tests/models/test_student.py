"""Students built from a teacher's layers: the right weights, an unchanged teacher, and clear errors."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from llmkit.errors import UserError
from llmkit.models.loading import transformer_blocks
from llmkit.models.student import select_layers, student_from_teacher

CONFIGS = {
    "bert": lambda: T.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=6, num_attention_heads=2,
                                 intermediate_size=37),
    "gpt2": lambda: T.GPT2Config(n_layer=6, n_embd=32, n_head=2, vocab_size=99, bos_token_id=0, eos_token_id=0,
                                 pad_token_id=0),
    "llama": lambda: T.LlamaConfig(num_hidden_layers=6, hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
                                   intermediate_size=37, vocab_size=99, pad_token_id=0),
}
MODELS = [("bert", T.BertForSequenceClassification), ("bert", T.BertForMaskedLM), ("gpt2", T.GPT2LMHeadModel),
          ("gpt2", T.GPT2ForSequenceClassification), ("llama", T.LlamaForCausalLM),
          ("llama", T.LlamaForSequenceClassification)]
IDS = [cls.__name__ for _, cls in MODELS]


def make_teacher(family: str, cls, **kwargs):
    torch.manual_seed(0)
    return cls._from_config(CONFIGS[family](), **kwargs).eval()


def inputs(batch: int = 2, length: int = 7) -> dict:
    ids = torch.randint(1, 99, (batch, length), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def blocks_prefix(model) -> str:
    blocks = transformer_blocks(model)
    return next(n for n, m in model.named_modules() if m is blocks)


def split_state(model) -> tuple[dict, dict]:
    """(non-block tensors by name, [block index -> {name inside the block: tensor}])."""
    prefix = blocks_prefix(model) + "."
    outside, blocks = {}, {}
    for name, tensor in model.state_dict().items():
        if name.startswith(prefix):
            index, rest = name[len(prefix):].split(".", 1)
            blocks.setdefault(int(index), {})[rest] = tensor
        else:
            outside[name] = tensor
    return outside, blocks


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("family, cls", MODELS, ids=IDS)
def test_student_keeps_the_chosen_layers_and_everything_outside_them(family, cls):
    teacher = make_teacher(family, cls)
    keep = [1, 3, 4]
    student = student_from_teacher(teacher, keep)

    assert type(student) is cls
    assert student.config.num_hidden_layers == 3 and len(transformer_blocks(student)) == 3
    assert teacher.config.num_hidden_layers == 6  # the teacher's config is not touched
    teacher_outside, teacher_blocks = split_state(teacher)
    student_outside, student_blocks = split_state(student)
    assert sorted(student_blocks) == [0, 1, 2]
    for i, j in enumerate(keep):
        assert_same_tensors(student_blocks[i], teacher_blocks[j])
    assert_same_tensors(student_outside, teacher_outside)  # embeddings, final norm, pooler, heads

    out = student(**inputs())
    expected = {"BertForMaskedLM": (2, 7, 99), "GPT2LMHeadModel": (2, 7, 99), "LlamaForCausalLM": (2, 7, 99)}
    assert out.logits.shape == expected.get(cls.__name__, (2, 2))
    assert not student.training
    assert all(p.requires_grad for p in student.parameters())


@pytest.mark.parametrize("family, cls", MODELS, ids=IDS)
def test_student_with_every_layer_computes_what_the_teacher_computes(family, cls):
    teacher = make_teacher(family, cls)
    student = student_from_teacher(teacher, list(range(6)))
    batch = inputs()
    with torch.no_grad():
        assert torch.allclose(student(**batch).logits, teacher(**batch).logits, atol=1e-6)


@pytest.mark.parametrize("family, cls", [MODELS[1], MODELS[2], MODELS[4]], ids=[IDS[1], IDS[2], IDS[4]])
def test_teacher_is_unchanged_and_shares_no_storage(family, cls):
    teacher = make_teacher(family, cls)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = student_from_teacher(teacher, [0, 5])
    assert_same_tensors(teacher.state_dict(), before)

    teacher_ptrs = {t.data_ptr() for t in teacher.state_dict().values()}
    assert not teacher_ptrs & {t.data_ptr() for t in student.state_dict().values()}

    student.train()
    optimizer = torch.optim.SGD(student.parameters(), lr=1.0)
    batch = inputs()
    student(**batch, labels=batch["input_ids"]).loss.backward()
    optimizer.step()
    assert_same_tensors(teacher.state_dict(), before)
    changed = [k for k, v in student.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert changed  # the step did move the student (sanity check of the check above)


def test_gpt2_lm_head_stays_tied_to_the_students_embeddings():
    teacher = make_teacher("gpt2", T.GPT2LMHeadModel)
    student = student_from_teacher(teacher, [0, 2, 4])
    assert student.lm_head.weight is student.transformer.wte.weight
    assert student.lm_head.weight is not teacher.lm_head.weight
    assert student.config.n_layer == 3 and student.config.to_dict()["n_layer"] == 3  # through the attribute_map


def test_student_keeps_the_teachers_dtype_and_attention_implementation():
    teacher = make_teacher("llama", T.LlamaForCausalLM, dtype=torch.bfloat16, attn_implementation="eager")
    student = student_from_teacher(teacher, [0, 3])
    assert student.dtype == torch.bfloat16
    assert {p.dtype for p in student.parameters()} == {torch.bfloat16}
    assert student.config._attn_implementation == "eager"
    assert student(**inputs()).logits.shape == (2, 7, 99)


def test_per_layer_config_lists_are_cut_to_the_kept_layers(tmp_path):
    # Qwen2's config (like Gemma2's, Mistral's is not) carries layer_types, checked against num_hidden_layers.
    config = T.Qwen2Config(num_hidden_layers=6, hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
                           intermediate_size=37, vocab_size=99, use_sliding_window=True, sliding_window=4,
                           max_window_layers=3)
    torch.manual_seed(0)
    teacher = T.Qwen2ForCausalLM(config).eval()
    assert teacher.config.layer_types == ["full_attention"] * 3 + ["sliding_attention"] * 3
    student = student_from_teacher(teacher, [0, 4, 5])
    assert student.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    assert student(**inputs(length=9)).logits.shape == (2, 9, 99)
    student.save_pretrained(tmp_path)  # runs the config's validation (layer_types length == num_hidden_layers)

    same = student_from_teacher(teacher, list(range(6)))
    batch = inputs(length=9)
    with torch.no_grad():
        assert torch.allclose(same(**batch).logits, teacher(**batch).logits, atol=1e-6)


def test_peft_teacher_is_refused():
    peft = pytest.importorskip("peft")
    teacher = make_teacher("llama", T.LlamaForCausalLM)
    model = peft.get_peft_model(teacher, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(UserError, match="distill.student.from_teacher.*merge the adapter.*distill.student.name_or"):
        student_from_teacher(model, [0, 1])


def test_model_without_blocks_is_refused():
    class NoBlocks(torch.nn.Module):
        config = T.BertConfig(num_hidden_layers=4)

    with pytest.raises(UserError, match="distill.student.from_teacher: cannot find the transformer blocks"):
        student_from_teacher(NoBlocks(), [0, 1])


def test_bad_keep_is_refused_by_student_from_teacher():
    teacher = make_teacher("gpt2", T.GPT2LMHeadModel)
    with pytest.raises(UserError, match=r"keep_layers: 6 out of range.*6 layers \(0-5\)"):
        student_from_teacher(teacher, [0, 6])


@pytest.mark.parametrize("keep_layers, every, expected", [
    ([0, 2, 4], None, [0, 2, 4]),
    ([5], None, [5]),
    (list(range(6)), None, list(range(6))),
    (None, 1, [0, 1, 2, 3, 4, 5]),
    (None, 2, [0, 2, 4]),
    (None, 4, [0, 4]),
    (None, 10, [0]),
])
def test_select_layers(keep_layers, every, expected):
    assert select_layers(6, keep_layers, every) == expected


@pytest.mark.parametrize("keep_layers, every, pattern", [
    ([0, 6], None, r"^distill\.student\.from_teacher\.keep_layers: 6 out of range.*6 layers \(0-5\).*indices 0-5"),
    ([-1, 2], None, r"keep_layers: -1 out of range.*6 layers \(0-5\)"),
    ([0, 1.5], None, r"keep_layers: 1\.5 out of range"),
    ([3, 1], None, r"keep_layers: \[3, 1\] must be strictly increasing.*e\.g\. \[1, 3\].*6 layers"),
    ([1, 1, 2], None, r"keep_layers: \[1, 1, 2\] must be strictly increasing without repeats"),
    ([], None, r"keep_layers is empty.*6 layers \(0-5\)"),
    (None, 0, r"^distill\.student\.from_teacher\.every: 0 must be a whole number of at least 1.*6 layers"),
    (None, -2, r"every: -2 must be"),
    ([0, 1], 2, r"keep_layers and distill\.student\.from_teacher\.every are both set"),
    (None, None, r"set distill\.student\.from_teacher\.keep_layers .* or distill\.student\.from_teacher\.every"),
])
def test_select_layers_refuses_bad_input(keep_layers, every, pattern):
    with pytest.raises(UserError, match=pattern):
        select_layers(6, keep_layers, every)


def test_select_layers_names_the_given_key():
    with pytest.raises(UserError, match=r"^my\.key\.every: "):
        select_layers(6, None, 0, key="my.key")

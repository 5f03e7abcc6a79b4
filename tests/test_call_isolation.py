"""The CRM of a call is visible to that call only: threads, asyncio tasks, inner modules, failed calls, generate."""

import asyncio
import os
import threading

import pytest
import torch
from peft import get_peft_model
from torch.overrides import TorchFunctionMode

from peft_reclora.ops import BACKEND_ENV_VAR

from support.tiny_models import TINY_VOCAB, make_tiny_llama, reclora_config


USERS = 4
ITERATIONS = 25


@pytest.fixture
def model():
    return get_peft_model(make_tiny_llama(), reclora_config()).eval()


@pytest.fixture
def user_inputs():
    generator = torch.Generator().manual_seed(5)
    input_ids = torch.randint(3, TINY_VOCAB, (2, 6), generator=generator)
    return input_ids, [torch.randn(2, 6, generator=generator) * (user + 1) for user in range(USERS)]


def _sequential(model, input_ids, crms):
    with torch.no_grad():
        return [model(input_ids=input_ids, crm_embeds=crm).logits for crm in crms]


def test_threads_sharing_one_model_each_get_their_own_result(model, user_inputs):
    input_ids, crms = user_inputs
    expected = _sequential(model, input_ids, crms)
    for a in range(USERS):
        for b in range(a + 1, USERS):
            assert (expected[a] - expected[b]).abs().max() > 1e-3, "users must be distinguishable"
    results = {user: [] for user in range(USERS)}
    start = threading.Barrier(USERS)

    def serve(user):
        start.wait()
        with torch.no_grad():
            for _ in range(ITERATIONS):
                results[user].append(model(input_ids=input_ids, crm_embeds=crms[user]).logits)

    threads = [threading.Thread(target=serve, args=(user,)) for user in range(USERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wrong = sum(
        not torch.allclose(logits, expected[user], rtol=1e-5, atol=1e-6)
        for user, outputs in results.items() for logits in outputs
    )
    assert all(len(outputs) == ITERATIONS for outputs in results.values())
    assert wrong == 0, f"{wrong} of {USERS * ITERATIONS} threaded outputs differ from the sequential ones"


def test_threads_generating_at_once_each_follow_their_own_user(model, user_inputs):
    input_ids, crms = user_inputs
    settings = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, output_logits=True,
                    return_dict_in_generate=True)
    expected = [torch.stack(model.generate(input_ids=input_ids, crm_embeds=crm, **settings).logits, 1) for crm in crms]
    results, errors = {}, []
    start = threading.Barrier(USERS + 1)

    def serve(user):
        start.wait()
        outputs = []
        for _ in range(5):
            outputs.append(torch.stack(model.generate(input_ids=input_ids, crm_embeds=crms[user], **settings).logits,
                                       1))
        results[user] = outputs

    def misbehave():  # a thread whose calls fail must not disturb the others
        start.wait()
        for _ in range(10):
            try:
                model(input_ids=input_ids, crm_embeds=torch.randn(2, 5))
            except ValueError as error:
                errors.append(error)

    threads = [threading.Thread(target=serve, args=(user,)) for user in range(USERS)]
    threads.append(threading.Thread(target=misbehave))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 10 and all("crm_dim=6" in str(error) for error in errors)
    for user in range(USERS):
        assert len(results[user]) == 5
        for logits in results[user]:
            torch.testing.assert_close(logits, expected[user], rtol=1e-5, atol=1e-6)


def test_asyncio_tasks_keep_their_own_crm(model, user_inputs):
    input_ids, crms = user_inputs
    expected = _sequential(model, input_ids, crms)
    tuner = model.base_model
    decoder_expected = []
    with torch.no_grad():
        for crm in crms:
            with tuner.use_crm_embeds(crm):
                decoder_expected.append(tuner.model.model(input_ids=input_ids).last_hidden_state)

    def score(user):
        with torch.no_grad():  # grad mode is per thread: set it where the call runs
            return model(input_ids=input_ids, crm_embeds=crms[user]).logits

    async def in_thread(user):
        return await asyncio.to_thread(score, user)

    def decode():
        with torch.no_grad():
            return tuner.model.model(input_ids=input_ids).last_hidden_state

    async def scoped(user):  # tasks interleave at every await while each holds its own scope
        with tuner.use_crm_embeds(crms[user]):
            await asyncio.sleep(0)
            first = decode()
            await asyncio.sleep(0)
            return first, decode()

    async def main():
        threaded = await asyncio.gather(*(in_thread(user) for _ in range(3) for user in range(USERS)))
        scopes = await asyncio.gather(*(scoped(user) for user in range(USERS)))
        return threaded, scopes

    threaded, scopes = asyncio.run(main())
    assert torch.is_grad_enabled()
    for index, logits in enumerate(threaded):
        torch.testing.assert_close(logits, expected[index % USERS], rtol=1e-5, atol=1e-6)
    for user, pair in enumerate(scopes):
        for hidden in pair:
            torch.testing.assert_close(hidden, decoder_expected[user], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="outside a call"):
        tuner.model.model(input_ids=input_ids)


def test_inner_module_after_a_call_does_not_reuse_its_crm(model, batch):
    model(**batch)
    decoder = model.base_model.model.model
    with pytest.raises(ValueError, match="outside a call of the RecLoRA model") as info:
        decoder(input_ids=batch["input_ids"])
    assert "use_crm_embeds" in str(info.value)
    with model.disable_adapter():
        decoder(input_ids=batch["input_ids"])  # no CRM needed where the adapter is off


def test_a_failed_call_leaves_nothing_behind(model, batch):
    with pytest.raises(ValueError, match="crm_dim=6"):
        model(input_ids=batch["input_ids"], crm_embeds=torch.randn(3, 5))
    with pytest.raises(ValueError, match="outside a call"):  # not the previous call's width error
        model.base_model.model.model(input_ids=batch["input_ids"])
    with pytest.raises(ValueError, match="needs `crm_embeds`"):
        model(input_ids=batch["input_ids"])
    model(**batch)  # and the model still works


def test_use_crm_embeds_conditions_inner_modules_like_a_model_call(model, batch):
    tuner = model.base_model
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"], crm_embeds=batch["crm_embeds"], output_hidden_states=True)
        with tuner.use_crm_embeds(batch["crm_embeds"]):
            hidden = tuner.model.model(input_ids=batch["input_ids"]).last_hidden_state
            logits = model(input_ids=batch["input_ids"]).logits  # the model call inherits the scope's CRM
    torch.testing.assert_close(logits, expected.logits)
    torch.testing.assert_close(hidden, expected.hidden_states[-1])
    with pytest.raises(ValueError, match="NaN or Inf"):
        with tuner.use_crm_embeds(torch.full((3, 6), float("nan"))):
            pass


# --------------------------------------------------------------------------------------------------------------------
# generate: one CRM row per prompt on every input path


@pytest.mark.parametrize("path", ["input_ids", "inputs", "positional", "inputs_embeds"])
@pytest.mark.parametrize("rows", [1, 2])
def test_generate_checks_the_crm_batch_on_every_input_path(model, path, rows):
    input_ids = torch.randint(3, TINY_VOCAB, (4, 5), generator=torch.Generator().manual_seed(1))
    args, kwargs = (), {}
    if path == "positional":
        args = (input_ids,)
    elif path == "inputs_embeds":
        kwargs["inputs_embeds"] = model.get_input_embeddings()(input_ids).detach()
    else:
        kwargs[path] = input_ids
    with pytest.raises(ValueError, match=f"`crm_embeds` has batch size {rows} but generate\\(\\) was given 4"):
        model.generate(*args, **kwargs, crm_embeds=torch.randn(rows, 6), max_new_tokens=2, do_sample=False)
    out = model.generate(*args, **kwargs, crm_embeds=torch.randn(4, 6), max_new_tokens=2, do_sample=False)
    assert out.shape[0] == 4


def test_generate_expands_only_by_its_own_factors(model):
    input_ids = torch.randint(3, TINY_VOCAB, (2, 5), generator=torch.Generator().manual_seed(2))
    crm = torch.randn(2, 6)
    out = model.generate(input_ids=input_ids, crm_embeds=crm, num_beams=2, num_return_sequences=2, max_new_tokens=2,
                         do_sample=False)
    assert out.shape[0] == 4
    sampled = model.generate(input_ids=input_ids, crm_embeds=crm, do_sample=True, num_return_sequences=3,
                             max_new_tokens=2)
    assert sampled.shape[0] == 6


# --------------------------------------------------------------------------------------------------------------------
# hot path: checks and backend selection once per call, never per layer or decoding step


class HostSyncCounter(TorchFunctionMode):
    """Counts tensor operations that copy a device value to the host (a synchronisation on GPUs)."""

    SYNCING = {"__bool__", "item", "tolist", "__int__", "__float__", "nonzero", "__index__"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.SYNCING:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _syncs(call) -> int:
    with torch.no_grad(), HostSyncCounter() as counter:
        call()
    return counter.count


def test_one_host_sync_per_forward_and_per_generate(model, batch):
    ids, crm = batch["input_ids"], batch["crm_embeds"]

    def base_forward():
        with model.disable_adapter():
            model(input_ids=ids)

    assert _syncs(lambda: model(input_ids=ids, crm_embeds=crm)) - _syncs(base_forward) == 1

    def generate(steps):
        return lambda: model.generate(input_ids=ids, crm_embeds=crm, max_new_tokens=steps, min_new_tokens=steps,
                                      do_sample=False)

    def base_generate(steps):
        def run():
            with model.disable_adapter():
                model.generate(input_ids=ids, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
        return run

    for steps in (2, 8):
        assert _syncs(generate(steps)) - _syncs(base_generate(steps)) == 1, f"{steps} decoding steps"
    model.base_model.check_crm_finite = False
    assert _syncs(lambda: model(input_ids=ids, crm_embeds=crm)) == _syncs(base_forward)
    assert _syncs(generate(8)) == _syncs(base_generate(8))


class CountingEnviron(dict):
    def __init__(self, environ):
        super().__init__(environ)
        self.reads = 0

    def get(self, key, default=None):
        if key == BACKEND_ENV_VAR:
            self.reads += 1
        return super().get(key, default)

    def __getitem__(self, key):
        if key == BACKEND_ENV_VAR:
            self.reads += 1
        return super().__getitem__(key)


def test_backend_is_resolved_once_per_call(model, batch, monkeypatch):
    environ = CountingEnviron(os.environ)
    monkeypatch.setattr(os, "environ", environ)
    with torch.no_grad():
        model(**batch)
        assert environ.reads == 1
        environ.reads = 0
        model.generate(input_ids=batch["input_ids"], crm_embeds=batch["crm_embeds"], max_new_tokens=6,
                       min_new_tokens=6, do_sample=False)
        assert environ.reads == 1
    environ[BACKEND_ENV_VAR] = "reference"
    with torch.no_grad():
        reference = model(**batch).logits
    del environ[BACKEND_ENV_VAR]
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reference, rtol=1e-5, atol=1e-6)
    environ[BACKEND_ENV_VAR] = "warp-drive"
    with pytest.raises(ValueError, match=BACKEND_ENV_VAR):
        model(**batch)


def test_a_copy_made_while_a_checkpointed_backward_is_pending_starts_clean(batch):
    import copy

    model = get_peft_model(make_tiny_llama(), reclora_config())
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    pending = model(**batch, labels=batch["input_ids"]).loss
    clone = copy.deepcopy(model)
    clone(**batch, labels=batch["input_ids"]).loss.backward()  # no "backward first" error: the copy has no call
    assert all(p.grad is not None for n, p in clone.named_parameters() if p.requires_grad)
    with pytest.raises(RuntimeError, match="backward"):
        model(**batch, labels=batch["input_ids"])  # the original still waits for its own backward
    pending.backward()

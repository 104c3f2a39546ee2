"""The end-to-end story ``royalty demo`` (and ``make demo``) tells, on a throwaway node.

A node is born and participants join; a domain expert creates a curated datanet; a contributor imports a small
file with one bad line (the report shows it, the good lines are kept); the owner curates and publishes version 1.
ben builds and pretrains a tiny base model on this machine, fine-tunes a LoRA adapter on version 1, evaluates
it and registers it (its manifest ties it to the base weights and the version's root). cy asks the adapter a
question and Proof of Attribution traces the answer to the training data behind it: a receipt with each
contributor's weight, the top examples and the verbatim spans, verified by recomputing it. Then the money: the
operator funds the participants from the treasury; ada and ben stake OPEN for gOPEN and delegate to themselves;
ada proposes raising the contributors' share of every inference fee, they vote, the proposal waits out the
timelock and executes; cy's sample request reserves a fee that is then settled by the new split (to ben as
adapter owner, to the contributors by the receipt's weights, to stakers and the treasury). Last, the checks anyone can run: an
outsider verifies one contribution's proof (contribution → version root → signed journal) with nothing but the
proof and the node's public key, the ledger audit replays every transfer, and the whole journal is replayed and
verified. Governance runs on days and weeks, so the demo's node runs on a simulated clock that the story moves
forward. Serving will extend this same story.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .datanet import verify_proof
from .errors import InvalidInput
from .ledger.amounts import UNIT, format_amount
from .ledger.audit import audit_ledger
from .attribution.payout import recipients
from .node import init_node, now_ms

Say = Callable[[str], None]

# ada's contribution file is the first ADA_LINES lines (line 4 is missing its response and is reported, the rest
# are kept); dee contributes the others as records.
ADA_LINES = 15
SAMPLE = [
    '{"prompt": "How long should I cool a minor burn?", "response": "Hold it under cool running water for 20 minutes."}',
    '{"prompt": "What do I do for a nosebleed?", "response": "Sit up, lean forward and pinch the soft part of the nose for 10 minutes."}',
    '{"prompt": "How do I treat a bee sting?", "response": "Scrape the sting out sideways, wash the area and apply a cold pack."}',
    '{"prompt": "What is the recovery position?"}',
    '{"prompt": "When should I call an ambulance for chest pain?", "response": "At once if the pain is crushing, spreads to the arm or jaw, or comes with breathlessness."}',
    '{"prompt": "How do I help someone who is choking?", "response": "Give up to five sharp back blows between the shoulder blades, then up to five abdominal thrusts."}',
    '{"prompt": "What should I do for a sprained ankle?", "response": "Rest it, put a cold pack on it for 20 minutes, wrap it firmly and keep it raised."}',
    '{"prompt": "How do I stop a cut from bleeding?", "response": "Press firmly on the cut with a clean cloth and keep pressing until the bleeding stops."}',
    '{"prompt": "What do I do if someone faints?", "response": "Lay them on their back, raise their legs and loosen tight clothing until they come round."}',
    '{"prompt": "How do I cool someone with heat exhaustion?", "response": "Move them somewhere cool, give them water to sip and cool their skin with wet cloths."}',
    '{"prompt": "What should I do for a splinter?", "response": "Wash the area, pull the splinter out along its line with clean tweezers and wash again."}',
    '{"prompt": "How do I treat a small blister?", "response": "Leave it unbroken, cover it with a soft plaster and let it heal on its own."}',
    '{"prompt": "What do I do if something gets in my eye?", "response": "Rinse the eye with clean running water for several minutes and do not rub it."}',
    '{"prompt": "How do I help someone having a seizure?", "response": "Clear the space around them, cushion their head and time the seizure; never hold them down."}',
    '{"prompt": "What should I do after a dog bite?", "response": "Wash the bite with soap and running water for five minutes and see a doctor the same day."}',
    '{"prompt": "How do I treat mild sunburn?", "response": "Cool the skin with a cool shower, drink water and apply a soothing after-sun lotion."}',
    '{"prompt": "What do I do if someone swallowed a chemical?", "response": "Call poison control or an ambulance at once and keep the container to show them."}',
    '{"prompt": "How do I treat a bruise?", "response": "Hold a cold pack wrapped in a cloth on the bruise for 20 minutes, several times a day."}',
    '{"prompt": "What should I do if someone is hypothermic?", "response": "Move them indoors, remove wet clothes and warm them slowly with blankets."}',
    '{"prompt": "How do I help someone with an asthma attack?", "response": "Help them sit upright and take their reliever inhaler, one puff every minute up to ten."}',
    '{"prompt": "What do I do for a burn from boiling water?", "response": "Cool it under cool running water for 20 minutes, then cover it loosely with cling film."}',
]


def run_demo(home: Path | None, say: Say, *, pretrain_minutes: float = 1.0) -> None:
    if home is None:
        with tempfile.TemporaryDirectory(prefix="royalty-demo-") as tmp:
            _story(Path(tmp) / "node", say, pretrain_minutes)
        return
    if home.exists() and any(home.iterdir()):
        raise InvalidInput(f"{home} is not empty; the demo needs a new directory (or no --home)", field="home")
    _story(home, say, pretrain_minutes)


class SimulatedClock:
    """Real time plus an offset the story moves forward (``skip``), so a week of voting takes no time."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def __call__(self) -> int:
        return now_ms() + self.offset_ms

    def skip(self, seconds: int) -> None:
        self.offset_ms += seconds * 1000


def _story(home: Path, say: Say, pretrain_minutes: float) -> None:
    say("== 1. A node is born")
    clock = SimulatedClock()
    node, _ = init_node(home, clock=clock)
    with node:
        say(f"   node {node.node_id} at {node.home}")
        say(f"   its checkpoint verifier key: {node.signer.verifier_key}")

        say("\n== 2. Participants join (each change is a journal event)")
        people = [
            ("ada", "a data contributor"),
            ("dee", "another data contributor"),
            ("ben", "a domain expert who will train an adapter"),
            ("cy", "an app developer who will call the API"),
        ]
        for name, role in people:
            account, key = node.accounts.create(name, actor=node.operator())
            assert key is not None
            say(f"   {name:<4} {account.id}  {role}; API key {key[:22]}… (shown once, stored hashed)")
        who = node.accounts.authenticate(key)
        say(f"   the last key authenticates as {who.name!r}")

        say("\n== 3. ben creates a curated datanet; ada contributes a file with one bad line, dee a few records")
        datanet = node.datanets.create(
            "first-aid-qa",
            title="First-aid questions and answers",
            kind="instruction",
            licenses=["CC-BY-4.0"],
            policy="curated",
            owner="ben",
            description="Short, checked first-aid answers for a domain assistant.",
        )
        say(f"   datanet {datanet.slug} ({datanet.id}), kind {datanet.kind}, policy {datanet.policy}, owner ben")
        sample = home / "first-aid.jsonl"
        sample.write_text("\n".join(SAMPLE[:ADA_LINES]) + "\n", encoding="utf-8")
        report = node.datanets.contribute_file(
            datanet.slug, sample.read_bytes(), sample.name, contributor="ada", consent="may be used to train and serve models"
        )
        counts = report.to_dict()["counts"]
        say(f"   {sample.name}: {counts['pending']} pending review, {counts['duplicates']} duplicates, {counts['rejected']} rejected")
        for rejected in report.rejected:
            say(f"     line {rejected['line']}: {rejected['reason']}")
        dee = node.datanets.contribute_records(datanet.slug, [json.loads(line) for line in SAMPLE[ADA_LINES:]],
                                               contributor="dee", consent="may be used to train and serve models")
        say(f"   dee: {dee.to_dict()['counts']['pending']} records pending review")

        say("\n== 4. ben reviews the queue and publishes version 1")
        queue = node.datanets.queue(datanet.slug, actor="ben")
        node.datanets.review(datanet.slug, actor="ben", accept=[c.id for c in queue])
        # Publishing costs a protocol fee (Params.publish_fee), paid to the treasury: the operator funds ben first.
        node.tokens.faucet("ben", 10 * 10**6, actor=node.operator())
        version = node.datanets.publish(datanet.slug, actor="ben")
        say(f"   accepted {len(queue)}; version {version.number}: {version.size} contributions, root {version.root.hex()[:16]}…")

        adapter = _factory(node, home, datanet.slug, version.number, pretrain_minutes, say)
        receipt = _attribution(node, adapter, say)
        _money(node, clock, say, adapter, receipt)

        say("\n== 13. The journal")
        for event in node.journal.events(limit=200):
            say(f"   #{event.seq:<3} {event.type:<22} leaf {event.leaf_hash.hex()[:16]}…")

        say("\n== 14. The node signs a checkpoint (C2SP signed note, Ed25519)")
        checkpoint = node.journal.checkpoint()
        for line in checkpoint.note.rstrip("\n").split("\n"):
            say(f"   | {line}")

        say("\n== 15. An outsider checks ada's first contribution with only the proof and the node's public key")
        bundle = json.loads(json.dumps(node.datanets.proof(datanet.slug, queue[0].id, version=version.number)))
        say(f"   contribution {bundle['contribution_id'][:16]}… at position {bundle['position']} of {bundle['size']}")
        say(f"   proof: {len(bundle['proof'])} hashes to the version root, then journal event #{bundle['journal']['seq']} "
            f"under a checkpoint of size {bundle['journal']['tree_size']}")
        result = verify_proof(bundle, [node.signer.verifier_key])
        say(f"   verified: in version {result['version']} of {result['datanet']['slug']}, root signed by {result['origin']}")

        say("\n== 16. The ledger audit replays every transfer and checks the invariants")
        audit = audit_ledger(node)
        if not audit.ok:
            raise AssertionError(f"the ledger audit failed: {audit.problems[:3]}")
        say(f"   {audit.transfers} transfers and {audit.accounts} accounts replayed from {audit.ledger_events} journal "
            f"events: every balance matches, I1-I11 hold; supply {_open(audit.supply)}")

        say("\n== 17. The whole journal is replayed from its leaves and verified")
        report = node.journal.verify()
        say(
            f"   verified: {report.size} events, {report.checkpoints} signed checkpoint(s), "
            f"root {report.root.hex()}"
        )
        say("\nDone: every state change is journaled, signed and independently verifiable.")


# ben's TrainConfig for the demo adapter: small and quick on two CPU cores.
DEMO_CONFIG = """\
model:
  base: {base}
data:
  datanets: [{ref}]
  max_seq_len: 128
  eval_fraction: 0.2
lora:
  r: 8
  alpha: 16
  target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]
train:
  epochs: 30
  learning_rate: 0.003
  batch_size: 4
  seed: 7
output:
  name: first-aid-helper
  license: CC-BY-4.0
price:
  input_per_1k: "0.5"
  output_per_1k: "1.5"
"""


def _factory(node: Any, home: Path, slug: str, version: int, pretrain_minutes: float, say: Say) -> None:
    from .factory.basemodel import corpus_texts, init_tiny, pretrain
    from .factory.config import load_config

    say("\n== 5. ben builds a small base model, then fine-tunes a LoRA adapter on version 1 (ModelFactory)")
    base_dir = home / "models" / "tiny-llama"
    general = corpus_texts(None, None)  # the built-in corpus: everyday English, no first-aid answers from the datanet
    # The tokenizer also sees the datanet's words; the model's weights learn them only in the adapter.
    identity = init_tiny(base_dir, general + corpus_texts(node, f"{slug}@{version}"), seed=0)
    say(f"   {identity.architecture}, {identity.num_parameters:,} parameters, tokenizer trained here: {base_dir}")
    if pretrain_minutes > 0:
        stats = pretrain(base_dir, general, minutes=pretrain_minutes, seed=0)
        say(f"   pretrained {stats['steps']} steps in {stats['seconds']:.0f} s on the built-in corpus (general English)")
    else:
        say("   not pretrained (--pretrain-minutes 0): its answers will be noise")
    config = home / "first-aid-helper.yaml"
    config.write_text(DEMO_CONFIG.format(base=base_dir, ref=f"{slug}@{version}"), encoding="utf-8")
    cfg = load_config(config)
    say(f"   {config.name}: LoRA r={cfg.lora.r} on {', '.join(cfg.lora.target_modules)}, {cfg.train.epochs} epochs, "
        f"seed {cfg.train.seed}")
    # Registering an adapter costs a protocol fee (Params.adapter_registration_fee), paid by its owner.
    node.tokens.faucet("ben", node.params.current().adapter_registration_fee, actor=node.operator())
    result = node.factory.train(cfg, actor="ben")
    run, ev, adapter = result.run, result.evaluation, result.adapter
    say(f"   trained {run.steps} steps, {run.tokens:,} tokens in {run.seconds:.1f} s; train loss {run.train_loss:.3f}")
    if ev:
        say(f"   held-out ({ev['examples']} examples): perplexity {ev['base_perplexity']:.1f} (base) -> "
            f"{ev['perplexity']:.1f} (adapter)")
    manifest = adapter.manifest
    say(f"   adapter {adapter.name}@{adapter.version} registered by ben ({_open(node.params.current().adapter_registration_fee)} fee)")
    say(f"   royalty.json: base weights {manifest['base_model']['weights_sha256'][:16]}…, "
        + ", ".join(f"{d['slug']}@{d['version']} root {d['root'][:16]}…" for d in manifest["datanets"])
        + f", config {manifest['config_sha256'][:16]}…, {len(manifest['files'])} files hashed")
    check = node.adapters.verify(f"{adapter.name}@{adapter.version}")
    say(f"   royalty adapter verify: {'ok' if check['ok'] else check['problems']}")
    return adapter


def _attribution(node: Any, adapter: Any, say: Say) -> Any:
    say("\n== 6. cy asks the adapter a question; Proof of Attribution traces the answer to its training data")
    ref = f"{adapter.name}@{adapter.version}"
    built = node.attribution.build_index(ref)
    replay = "reproduced the adapter bit for bit" if built["replay"]["identical"] else \
        f"max weight difference {built['replay']['max_abs_diff']:.1e}"
    say(f"   index: the training run replayed ({replay}); each of the {built['rows']} training examples' share of the "
        f"updates, projected to {built['dim']} numbers, and a suffix array over their text")
    question = "How do I treat a bee sting?"
    receipt = node.attribution.attribute(ref, prompt=question, request_id="req-demo-1")
    answer = node.attribution.show(receipt.receipt_id)["request"]["response"]
    say(f"   Q: {question}\n   A: {answer}")
    say(f"   receipt {receipt.receipt_id}: weights (parts per million of the data's share)")
    for account, ppm in sorted(receipt.weights.contributors.items(), key=lambda kv: -kv[1]):
        say(f"     {node.accounts.get(account).name:<6} {ppm:>9,}")
    for t in receipt.top[:3]:
        say(f"   top example: contribution {t.contribution_id[:12]}… (position {t.position}), cosine {t.score}")
    for span in receipt.spans[:3]:
        say(f"   verbatim span {span.text!r}, found {span.count}x in the training text")
    check = node.attribution.verify(receipt.receipt_id)
    say(f"   royalty attribution verify: recomputed from the index bit for bit, journal event #{check['event_seq']}")
    return receipt


def _open(units: int, token: str = "OPEN") -> str:
    return f"{format_amount(units)} {token}"


def _money(node: Any, clock: SimulatedClock, say: Say, adapter: Any, receipt: Any) -> None:
    operator = node.operator()
    say("\n== 7. The operator funds the participants from the treasury (an admin-only faucet)")
    for name, amount in (("ada", 30_000), ("ben", 10_000), ("cy", 100)):
        node.tokens.faucet(name, amount * UNIT, actor=operator)
        say(f"   {name:<4} receives {amount:>6,} OPEN")

    say("\n== 8. ada and ben stake OPEN for gOPEN (1:1, non-transferable) and delegate their votes to themselves")
    for name, amount in (("ada", 20_000), ("ben", 5_000)):
        node.staking.stake(name, amount * UNIT, actor=name)
        node.staking.delegate(name, name, actor=name)
        say(f"   {name:<4} staked {amount:,} OPEN; voting power {_open(node.staking.get_votes(name), 'gOPEN')}")

    params = node.params.current()
    say("\n== 9. ada proposes a larger contributors' share of every inference fee")
    say(f"   today: treasury {params.fee_treasury_bps / 100:g}%, adapter owner {params.fee_owner_bps / 100:g}%, "
        f"stakers {params.fee_stakers_bps / 100:g}%, contributors {params.fee_contributors_bps / 100:g}%")
    clock.skip(1)  # voting power counts from the second after it was delegated (no same-instant flash votes)
    proposal = node.governance.propose(
        [{"type": "set_params", "changes": {"fee_owner_bps": 3_000, "fee_contributors_bps": 5_000}}],
        "Pay data contributors half of every inference fee: owner 40% -> 30%, contributors 40% -> 50%.",
        actor="ada",
    )
    say(f"   proposal {proposal.id}: {node.governance.state(proposal.id)}; voting opens after "
        f"{params.gov_voting_delay_s // 3600} h and lasts {params.gov_voting_period_s // 86_400} days")

    say("\n== 10. Voting, then the timelock (simulated clock)")
    clock.skip(params.gov_voting_delay_s + 1)
    for name in ("ada", "ben"):
        vote = node.governance.vote(proposal.id, "for", actor=name)
        say(f"   {name:<4} votes for with {_open(vote.weight, 'gOPEN')}")
    clock.skip(params.gov_voting_period_s)
    say(f"   +{params.gov_voting_period_s // 86_400} days: {node.governance.state(proposal.id)}")
    node.governance.queue(proposal.id, actor="ada")
    say(f"   queued in the timelock for {params.gov_timelock_delay_s // 3600} h")
    clock.skip(params.gov_timelock_delay_s + 1)
    node.governance.execute(proposal.id, actor="ada")
    params = node.params.current()
    say(f"   executed: owner {params.fee_owner_bps / 100:g}%, contributors {params.fee_contributors_bps / 100:g}%")

    say("\n== 11. cy's request: the fee is reserved first, then settled by the new split and the receipt's weights")
    reservation = node.fees.reserve_fee("req-demo-1", "cy", 2 * UNIT, actor=operator)
    say(f"   reserved {_open(reservation.amount)} of cy's OPEN (a pending transfer that expires if never settled)")
    settlement = node.fees.settle_fee("req-demo-1", 1_500_000, recipients(node, receipt, adapter), actor=operator)
    say(f"   settled {_open(settlement.amount)}; {_open(settlement.refunded)} returned to cy")
    say(f"   treasury {_open(settlement.treasury)}, ben (adapter owner) {_open(settlement.owner_amount)}, "
        f"stakers {_open(settlement.stakers)}, contributors {_open(settlement.contributors)}:")
    for leg in settlement.legs:
        if leg.role == "contributor":
            say(f"     {node.accounts.get(leg.account).name:<6} {_open(leg.amount)} (weight {leg.weight:,} ppm)")
    if settlement.dust:
            say(f"     rounding dust {_open(settlement.dust)} (to the DUST account, recycled into reward epochs)")

    say("\n== 12. Balances")
    for name in ("ada", "ben", "cy"):
        b = node.tokens.balance(name)
        claim = node.staking.claimable(name)
        say(f"   {name:<4} available {_open(b.available):>18}  staked {_open(b.staked):>14}  "
            f"staker rewards to claim {_open(claim)}")

"""One suite over every profile store (River's contract-test idea): what the
pipeline relies on, checked on the in-memory reference and on real Redis.

A behaviour the pipeline needs but only one implementation has (due entries
that a stale sweep must not move, source epochs that never go back, a
scoring write that must not recreate an erased profile) fails here for the
other one.
"""

from __future__ import annotations

from typing import Any

from patronage.models.identity import Person
from patronage.models.lapse import finding_from_json
from patronage.models.profile import Delta, token
from patronage.models.sources import SourceState
from patronage.models.timeunits import DAY_MS
from patronage.streams.types import ProfileStoreT
from tests.contract.conftest import run

T0 = 1_767_225_600_000


def receipt(n: int, day: int, offset: int | None = None) -> Delta:
    ts = T0 + day * DAY_MS
    return Delta(
        "store-receipts:0",
        n if offset is None else offset,
        token(f"r{n}"),
        ts,
        ts // DAY_MS,
        "order",
        origin="store",
        basket=12.5,
        net=12.5,
        categories=(("Molkereiprodukte", 12.5),),
        order_token=token(f"receipt-{n}"),
    )


def test_a_redelivered_batch_changes_nothing(store_of: Any) -> None:
    async def check(store: ProfileStoreT) -> tuple[Any, Any, Any, Any]:
        batch = {"anna": [receipt(0, 0), receipt(1, 3)]}
        first = await store.apply_batch(batch, {"anna": 0}, {0: 0.0})
        before = await store.profile("anna")
        again = await store.apply_batch(batch, {"anna": 0}, {0: 0.0})
        return first, again, before, await store.profile("anna")

    first, again, before, after = run(check, store_of)
    assert (first.applied, again.applied, again.duplicate_offsets) == (2, 0, 2)
    assert before == after and after["orders"] == 2


def test_due_entries_move_only_if_nobody_rescheduled_them(store_of: Any) -> None:
    async def check(store: ProfileStoreT) -> list[Any]:
        await store.apply_batch({"anna": [receipt(0, 5)]}, {"anna": 0})
        await store.apply_batch({"ben": [receipt(1, 2)]}, {"ben": 0})
        due = await store.due_customers(0, T0 + 10 * DAY_MS, 10)
        stale = [("anna", due[1][1] - 1, T0 + 50 * DAY_MS)]  # a score nobody holds
        await store.reschedule(0, stale)
        kept = await store.due_customers(0, T0 + 10 * DAY_MS, 10)
        await store.reschedule(
            0, [("anna", kept[1][1], T0 + 50 * DAY_MS), ("ben", kept[0][1], None)]
        )
        return [due, kept, await store.due_customers(0, T0 + 100 * DAY_MS, 10)]

    due, kept, moved = run(check, store_of)
    assert due == [("ben", float(T0 + 2 * DAY_MS)), ("anna", float(T0 + 5 * DAY_MS))]
    assert kept == due
    assert moved == [("anna", float(T0 + 50 * DAY_MS))]


def test_an_apply_reports_when_to_judge_again_and_its_entries_move_there(
    store_of: Any,
) -> None:
    """The due entry an apply writes is an early bound (its earliest activity);
    the apply also reports when its own judging says to judge again, and
    moving the entry there (with the scores' write) spares the sweep a second
    judgement of every customer of every batch. An entry someone lowered
    since (an earlier pending time) stays."""
    clock = float(T0 + 12 * DAY_MS)

    async def check(store: ProfileStoreT) -> list[Any]:
        visits = [receipt(n, day) for n, day in enumerate((0, 4, 8, 12))]
        anna = await store.apply_batch({"anna": visits}, {"anna": 0}, {0: clock})
        await store.apply_batch({"ben": [receipt(10, 2)]}, {"ben": 0}, {0: 0.0})
        ben = await store.apply_batch({"ben": [receipt(11, 9)]}, {"ben": 0}, {0: 0.0})
        _, swept_due = (await store.judge({"anna": clock}))["anna"]
        moves = {0: anna.lapse_due[0] + ben.lapse_due[0]}
        await store.store_scores({}, None, moves)
        return [anna.lapse_due, ben.lapse_due, swept_due, await store.due_customers(0, clock, 10)]

    anna_moves, ben_moves, swept_due, due_now = run(check, store_of)
    [(who, bound, again)] = anna_moves[0]
    assert (who, bound) == ("anna", T0)
    # what the sweep's own judging says: four visits 4 days apart, so the
    # gap after day 12 is decided 2 x 4 days later
    assert again == swept_due == float(T0 + 20 * DAY_MS)
    assert ben_moves[0][0][:2] == ("ben", T0 + 9 * DAY_MS)
    # anna moved past the clock; ben's earlier bound (day 2) was kept
    assert due_now == [("ben", float(T0 + 2 * DAY_MS))]


def test_sources_and_clock_marks_never_go_back(store_of: Any) -> None:
    async def check(store: ProfileStoreT) -> tuple[Any, Any]:
        tp = ("clicks", 3)
        marks = {0: {"clicks": T0 + 1000}}
        await store.apply_batch(
            {"anna": [receipt(0, 0)]}, {"anna": 0}, None, marks, {tp: SourceState(1, 5)}, 111
        )
        older = {0: {"clicks": T0}}
        await store.apply_batch(
            {"anna": [receipt(1, 1)]}, {"anna": 0}, None, older, {tp: SourceState(0, 99)}, 222
        )
        return await store.source_states([tp, ("clicks", 4)]), await store.clock_marks([0, 1])

    sources, marks = run(check, store_of)
    assert sources == {("clicks", 3): SourceState(1, 5), ("clicks", 4): SourceState()}
    assert float(marks[0]["hw:clicks"]) == T0 + 1000
    assert float(marks[0]["since"]) == 111 and float(marks[0]["seen:clicks"]) == 222
    assert marks[1] == {}


def test_scores_and_the_at_risk_schedule_go_in_one_call(store_of: Any) -> None:
    """A batch's scoring decisions and its purchases' at-risk schedule are
    one store call: decisions land on existing profiles only, the schedule
    overwrites an earlier time (judged again from the purchase on), and a
    call with a schedule alone still schedules."""

    async def check(store: ProfileStoreT) -> list[Any]:
        await store.apply_batch(
            {"anna": [receipt(0, 5)], "ben": [receipt(1, 2)]}, {"anna": 0, "ben": 0}
        )
        await store.schedule_risk({0: {"anna": T0 + 10 * DAY_MS}})
        written = await store.store_scores(
            {"anna": {"segment": 2, "segment_version": 1}, "zoe": {"segment": 1}},
            {0: {"anna": T0 + 40 * DAY_MS, "ben": T0 + 30 * DAY_MS}},
        )
        alone = await store.store_scores({}, {1: {"cleo": 7.0}})
        due = await store.due_customers(0, T0 + 60 * DAY_MS, 10, "risk")
        other = await store.due_customers(1, T0, 10, "risk")
        ids = sorted([c async for c in store.customer_ids()])
        return [written, alone, due, other, ids, await store.profile("anna")]

    written, alone, due, other, ids, profile = run(check, store_of)
    assert written == {"anna"} and alone == set()
    assert due == [("ben", float(T0 + 30 * DAY_MS)), ("anna", float(T0 + 40 * DAY_MS))]
    assert other == [("cleo", 7.0)]
    assert ids == ["anna", "ben"] and profile is not None and profile["segment"] == 2


def test_erased_stays_erased(store_of: Any) -> None:
    async def check(store: ProfileStoreT) -> tuple[Any, ...]:
        await store.apply_batch(
            {"anna": [receipt(0, 0)], "ben": [receipt(1, 0)]}, {"anna": 0, "ben": 0}
        )
        await store.store_scores({"anna": {"segment": 2, "segment_version": 1}})
        removed, segment = await store.erase("anna", 0)
        written = await store.store_scores({"anna": {"segment": 3}, "ben": {"segment": 1}})
        ids = sorted([c async for c in store.customer_ids()])
        due = await store.due_customers(0, T0 + DAY_MS, 10)
        return removed, segment, written, ids, await store.profile("anna"), due

    removed, segment, written, ids, profile, due = run(check, store_of)
    assert removed == 2 and segment == 2  # profile (with its trail), orders for at-risk judging
    assert written == {"ben"} and ids == ["ben"] and profile is None
    assert [c for c, _ in due] == ["ben"]


def test_acked_findings_leave_the_outbox_and_others_stay(store_of: Any) -> None:
    async def check(store: ProfileStoreT) -> tuple[Any, Any]:
        visits = [receipt(n, day) for n, day in enumerate(range(0, 120, 7))]
        late = T0 + 400 * DAY_MS
        result = await store.apply_batch({"anna": visits}, {"anna": 0}, {0: float(late)})
        pending = result.outbox["anna"]
        await store.ack_outbox({"anna": pending[:1]})
        verdicts = await store.judge({"anna": float(late)})
        return pending, verdicts["anna"][0]

    pending, left = run(check, store_of)
    assert [finding_from_json(raw).kind for raw in pending] == ["lapsed"]
    assert left == []


def test_fields_of_returns_only_existing_profiles(store_of: Any) -> None:
    async def check(store: ProfileStoreT) -> Any:
        await store.apply_batch({"anna": [receipt(0, 0)]})
        return await store.fields_of(["anna", "nobody"])

    found = run(check, store_of)
    assert list(found) == ["anna"] and found["anna"]["orders"] == 1


def test_partition_members_are_read_in_slices_and_forgotten(store_of: Any) -> None:
    async def check(store: ProfileStoreT) -> tuple[Any, ...]:
        batch = {f"c{i:03d}": [receipt(i, 0)] for i in range(25)}
        await store.apply_batch(batch, {c: int(c[1:]) % 2 for c in batch})
        await store.erase("c000", 0)
        seen: list[str] = []
        cursor, rounds = 0, 0
        while True:
            cursor, ids = await store.partition_members(0, cursor, 5)
            seen.extend(ids)
            rounds += 1
            if cursor == 0:
                break
        await store.forget_members(0, ["c002", "c004"])
        left: list[str] = []
        cursor = 0
        while True:
            cursor, ids = await store.partition_members(0, cursor, 100)
            left.extend(ids)
            if cursor == 0:
                break
        return seen, rounds, left

    seen, rounds, left = run(check, store_of)
    evens = {f"c{i:03d}" for i in range(2, 25, 2)}
    assert set(seen) == evens and rounds >= 1  # small sets may come back in one reply
    assert set(left) == evens - {"c002", "c004"}


def test_a_customer_with_nothing_to_judge_stays_listed_but_never_due(store_of: Any) -> None:
    """A partition's customers are listed for re-scoring whether or not a
    lapse judgment is pending: a sweep with nothing left to judge keeps the
    customer listed and out of every later sweep; an attribute change alone
    lists a new customer without making it due and never postpones a
    pending judgment. (In Redis one sorted set holds both, parked customers
    scored past any event time: this is what that must not change.)"""

    def attributes(n: int, day: int) -> Delta:
        ts = T0 + day * DAY_MS
        return Delta(
            "customer-attributes:0",
            n,
            token(f"a{n}"),
            ts,
            ts // DAY_MS,
            "attributes",
            attributes=(("loyalty_tier", '"gold"'),),
        )

    async def members(store: ProfileStoreT) -> set[str]:
        listed: set[str] = set()
        cursor = None
        while cursor != 0:
            cursor, ids = await store.partition_members(0, cursor or 0, 100)
            listed.update(ids)
        return listed

    async def check(store: ProfileStoreT) -> list[Any]:
        await store.apply_batch(
            {"anna": [receipt(0, 1)], "ben": [receipt(1, 2)]}, {"anna": 0, "ben": 0}
        )
        await store.apply_batch({"cleo": [attributes(2, 3)]}, {"cleo": 0})
        due = await store.due_customers(0, T0 + 10 * DAY_MS, 10)
        await store.reschedule(0, [("anna", due[0][1], None)])  # judged: nothing pending
        await store.apply_batch({"ben": [attributes(3, 4)]}, {"ben": 0})
        far = T0 + 3650 * DAY_MS  # ten years on
        return [due, await store.due_customers(0, far, 10), await members(store)]

    due, later, listed = run(check, store_of)
    assert due == [("anna", float(T0 + DAY_MS)), ("ben", float(T0 + 2 * DAY_MS))]
    assert later == [("ben", float(T0 + 2 * DAY_MS))]
    assert listed == {"anna", "ben", "cleo"}


def test_the_risk_queue_is_a_schedule_of_its_own(store_of: Any) -> None:
    """At-risk judgements: scheduled per partition (an apply overwrites, a
    refit pass only brings forward), swept by score, moved only if nobody
    rescheduled them, versioned per partition, erased with the customer, and
    never mixed with the lapse queue."""

    async def check(store: ProfileStoreT) -> list[Any]:
        await store.apply_batch(
            {"anna": [receipt(0, 5)], "ben": [receipt(1, 2)]}, {"anna": 0, "ben": 0}
        )
        await store.schedule_risk({0: {"anna": T0 + 40 * DAY_MS, "ben": T0 + 30 * DAY_MS}})
        await store.schedule_risk({1: {"cleo": 7.0}})
        await store.schedule_risk({0: {"ben": T0 + 70 * DAY_MS}})  # an apply: overwritten
        await store.schedule_risk({0: {"anna": T0 + 45 * DAY_MS}}, keep_earlier=True)
        due = await store.due_customers(0, T0 + 60 * DAY_MS, 10, "risk")
        lapse_due = await store.due_customers(0, T0 + 60 * DAY_MS, 10)
        await store.reschedule(0, [("anna", due[0][1] - 1, None)], "risk")  # stale: kept
        kept = await store.due_customers(0, T0 + 60 * DAY_MS, 10, "risk")
        await store.reschedule(0, [("anna", kept[0][1], T0 + 90 * DAY_MS)], "risk")
        moved = await store.due_customers(0, T0 + 100 * DAY_MS, 10, "risk")
        before = await store.risk_versions([0, 1])
        await store.set_risk_version(1, 4)
        after = await store.risk_versions([0, 1])
        await store.erase("anna", 0)
        erased = await store.due_customers(0, T0 + 100 * DAY_MS, 10, "risk")
        other = await store.due_customers(1, T0, 10, "risk")
        return [due, lapse_due, kept, moved, before, after, erased, other]

    due, lapse_due, kept, moved, before, after, erased, other = run(check, store_of)
    assert due == [("anna", float(T0 + 40 * DAY_MS))]
    assert [c for c, _ in lapse_due] == ["ben", "anna"]
    assert kept == due
    assert moved == [("ben", float(T0 + 70 * DAY_MS)), ("anna", float(T0 + 90 * DAY_MS))]
    assert before == {0: 0, 1: 0} and after == {0: 0, 1: 4}
    assert erased == [("ben", float(T0 + 70 * DAY_MS))] and other == [("cleo", 7.0)]


def test_judged_orders_leave_the_profile_and_marks_only_move_forward(store_of: Any) -> None:
    """Orders are kept for at-risk judging as they are applied (a redelivery
    adds none, an order before the decided mark none); a judgement trims
    them (the key goes when none is left) and moves its marks forward only;
    an erased customer is not brought back."""

    async def check(store: ProfileStoreT) -> list[Any]:
        orders = [receipt(n, day) for n, day in enumerate((0, 9, 30))]
        await store.apply_batch({"anna": orders}, {"anna": 0})
        await store.apply_batch({"anna": orders[:2]}, {"anna": 0})  # redelivered
        kept = (await store.risk_inputs(["anna"]))["anna"][1]
        await store.record_risk({"anna": (T0 + 9 * DAY_MS, T0 + 9 * DAY_MS)})
        await store.record_risk({"anna": (T0, T0)})  # an older judgement, late
        fields, left = (await store.risk_inputs(["anna"]))["anna"]
        await store.apply_batch({"anna": [receipt(3, 5)]}, {"anna": 0})  # before the mark
        late = (await store.risk_inputs(["anna"]))["anna"]
        await store.record_risk({"anna": (T0 + 30 * DAY_MS, None)})
        emptied = (await store.risk_inputs(["anna"]))["anna"][1]
        await store.erase("anna", 0)
        await store.record_risk({"anna": (T0 + 40 * DAY_MS, None)})
        return [kept, fields, left, late, emptied, await store.risk_inputs(["anna"])]

    kept, fields, left, late, emptied, gone = run(check, store_of)
    day, basket = DAY_MS, f"{receipt(0, 0).basket:g}"
    assert kept == f"{T0},{basket};{T0 + 9 * day},{basket};{T0 + 30 * day},{basket};"
    assert left == f"{T0 + 30 * day},{basket};"
    assert float(fields["risk_decided"]) == T0 + 9 * day
    assert float(fields["risk_episode"]) == T0 + 9 * day
    assert late[1] == left and float(late[0]["orders"]) == 4
    assert emptied == "" and gone == {}


def test_identity_links_and_persons_round_trip_and_are_forgotten(store_of: Any) -> None:
    """Links stored under both nodes (on a cluster: two slots), persons per
    node, a generation that moves with every change of people."""

    async def check(store: ProfileStoreT) -> list[Any]:
        person = Person("c-1", ("anonymous_id:0b7f", "c-1", "loyalty_card:2400"))
        pairs = {
            ("c-1", "anonymous_id:0b7f"): '{"type":"link"}',
            ("c-1", "loyalty_card:2400"): '{"type":"link","n":2}',
        }
        g0, _ = await store.identity_state([])
        await store.write_identities(pairs, dict.fromkeys(person.members, person))
        g1, _ = await store.identity_state([])
        links = await store.identity_links(["c-1", "loyalty_card:2400", "anonymous_id:none"])
        found = await store.persons_of(["anonymous_id:0b7f", "c-9"])
        # What the Resolver asks once per batch: the same, with the generation.
        assert await store.identity_state(["anonymous_id:0b7f", "c-9"]) == (g1, found)
        assert await store.identity_state([]) == (g1, {})
        await store.write_identities({}, {"anonymous_id:0b7f": None})
        after_split = await store.persons_of(["anonymous_id:0b7f", "c-1"])
        removed = await store.forget_identities(["c-1"])
        left = await store.identity_links(["c-1", "loyalty_card:2400", "anonymous_id:0b7f"])
        return [g1 > g0, links, found, after_split, removed, left, await store.persons_of(["c-1"])]

    moved, links, found, after_split, removed, left, gone = run(check, store_of)
    assert moved
    assert links == {
        "c-1": {
            "anonymous_id:0b7f": '{"type":"link"}',
            "loyalty_card:2400": '{"type":"link","n":2}',
        },
        "loyalty_card:2400": {"c-1": '{"type":"link","n":2}'},
        "anonymous_id:none": {},
    }
    assert found == {
        "anonymous_id:0b7f": Person("c-1", ("anonymous_id:0b7f", "c-1", "loyalty_card:2400"))
    }
    assert set(after_split) == {"c-1"}
    assert removed > 0 and gone == {}
    assert left == {"c-1": {}, "loyalty_card:2400": {}, "anonymous_id:0b7f": {}}


def test_parts_are_read_whole_and_scores_cleared(store_of: Any) -> None:
    async def check(store: ProfileStoreT) -> list[Any]:
        await store.apply_batch(
            {"anna": [receipt(0, 0), receipt(1, 3)], "loyalty_card:2400": [receipt(2, 1)]},
            {"anna": 0, "loyalty_card:2400": 0},
        )
        await store.store_scores({"loyalty_card:2400": {"segment": 4, "segment_version": 1}})
        states = await store.states_of(["anna", "loyalty_card:2400", "nobody"])
        cleared = await store.clear_scores(["loyalty_card:2400", "anna", "nobody"])
        again = await store.clear_scores(["loyalty_card:2400"])
        fields = await store.fields_of(["loyalty_card:2400"])
        return [states, cleared, again, fields]

    states, cleared, again, fields = run(check, store_of)
    assert set(states) == {"anna", "loyalty_card:2400"}
    assert states["anna"].days == [T0 // DAY_MS, T0 // DAY_MS + 3]
    assert float(states["anna"].fields["orders"]) == 2 and len(states["anna"].order_keys) == 2
    assert cleared == {"loyalty_card:2400": 4} and again == {}
    assert "segment" not in fields["loyalty_card:2400"] and "orders" in fields["loyalty_card:2400"]

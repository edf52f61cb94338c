"""event.from as ocaml/xapi/xapi_event.ml serves it (``from``, ``from_inner``,
``collect_events``, ``Token``, ``Subscription``)."""

import re
import threading
import time
import xmlrpc.client

from tests.functional.simulator.simhelpers import failure, new_vm

TOKEN = re.compile(r"\d{20},\d{20}\Z")


def event_from(xapi, classes, token, timeout):
    return getattr(xapi.event, "from")(classes, token, timeout)


def test_an_empty_token_reports_the_subscribed_task_as_added_with_its_record(xapi):
    # from_inner: an object created after the token (0) is an `add`, with
    # the record as its snapshot; Token.to_string pads both numbers to 20.
    task = xapi.task.create("waited on", "")
    other = xapi.task.create("not subscribed", "")

    batch = event_from(xapi, ["task/" + task], "", 5.0)

    assert [(e["class"], e["operation"], e["ref"]) for e in batch["events"]] == [
        ("task", "add", task)]
    assert batch["events"][0]["snapshot"]["name_label"] == "waited on"
    assert batch["events"][0]["snapshot"]["status"] == "pending"
    assert TOKEN.match(batch["token"])
    for ref in (task, other):
        xapi.task.destroy(ref)


def test_a_call_blocks_until_the_task_ends_and_reports_it_modified(xapi, host_ref):
    task = xapi.Async.host.call_plugin(host_ref, "test_plugin.py", "sleep",
                                       {"seconds": "0.5"})
    first = event_from(xapi, ["task/" + task], "", 5.0)
    assert first["events"][0]["snapshot"]["status"] == "pending"

    started = time.monotonic()
    second = event_from(xapi, ["task/" + task], first["token"], 10.0)
    waited = time.monotonic() - started

    assert 0.2 < waited < 5.0
    assert [(e["operation"], e["snapshot"]["status"]) for e in second["events"]] == [
        ("mod", "success")]
    assert second["token"] > first["token"]
    xapi.task.destroy(task)


def test_with_nothing_to_report_it_returns_no_events_after_the_timeout(xapi):
    task = xapi.task.create("quiet", "")
    token = event_from(xapi, ["task/" + task], "", 5.0)["token"]

    started = time.monotonic()
    batch = event_from(xapi, ["task/" + task], token, 0.3)

    assert batch["events"] == []
    assert 0.25 < time.monotonic() - started < 3.0
    assert batch["token"] == token
    xapi.task.destroy(task)


def test_a_destroyed_task_is_a_del_event_without_a_snapshot(xapi):
    task = xapi.task.create("short lived", "")
    token = event_from(xapi, ["task"], "", 5.0)["token"]
    xapi.task.destroy(task)

    batch = event_from(xapi, ["task"], token, 5.0)

    assert [(e["operation"], e["ref"]) for e in batch["events"]] == [("del", task)]
    assert "snapshot" not in batch["events"][0]


def test_an_object_made_and_deleted_after_the_token_is_not_seen(xapi):
    # collect_events, prepend_deleted: only rows created at or before the token.
    keep = xapi.task.create("kept", "")
    token = event_from(xapi, ["task/" + keep], "", 5.0)["token"]
    gone = xapi.task.create("gone", "")
    xapi.task.destroy(gone)
    xapi.task.set_other_config(keep, {"k": "v"})

    batch = event_from(xapi, ["task"], token, 5.0)

    assert [(e["operation"], e["ref"]) for e in batch["events"]] == [("mod", keep)]
    xapi.task.destroy(keep)


def test_class_names_match_in_any_case_and_star_matches_every_class(xapi):
    # Subscription.of_string lowercases the class; "*" is All.
    vm = new_vm(xapi, "evented")
    by_class = event_from(xapi, ["VM"], "", 5.0)
    everything = event_from(xapi, ["*"], "", 5.0)

    assert (vm, "vm") in {(e["ref"], e["class"]) for e in by_class["events"]}
    assert {"vm", "sr", "pbd", "host", "pool"} <= {e["class"] for e in everything["events"]}
    assert "session" not in {e["class"] for e in everything["events"]}  # gen_events:false
    xapi.VM.destroy(vm)


def test_valid_ref_counts_count_the_rows_of_every_table(xapi):
    batch = event_from(xapi, ["pool"], "", 5.0)
    assert batch["valid_ref_counts"]["pool"] == 1
    assert batch["valid_ref_counts"]["vm"] == len(xapi.VM.get_all())
    assert batch["valid_ref_counts"]["session"] >= 1


def test_a_token_that_is_not_two_numbers_is_a_parse_failure(xapi):
    # Token.of_string; xapi_event.ml, from: EVENT_FROM_TOKEN_PARSE_FAILURE [token].
    for token in ("12", "a,b", "1,2,3"):
        assert failure(event_from, xapi, ["task"], token, 1.0) == [
            "EVENT_FROM_TOKEN_PARSE_FAILURE", token]


def test_classes_that_are_not_a_list_of_strings_fail_to_unmarshal(sim, session):
    proxy = xmlrpc.client.ServerProxy(sim.url, allow_none=True)
    answer = getattr(proxy, "event.from")(session._session, "task", "", 1.0)
    assert answer["Status"] == "Failure"
    assert answer["ErrorDescription"][0] == "INTERNAL_ERROR"


def test_logging_out_ends_a_waiting_call_with_session_invalid(sim):
    # Xapi_event.From.on_session_deleted wakes the call: SESSION_INVALID.
    waiting = sim.session()
    ref = waiting._session
    task = waiting.xenapi.task.create("never ends", "")
    token = event_from(waiting.xenapi, ["task/" + task], "", 5.0)["token"]
    answers = []
    proxy = xmlrpc.client.ServerProxy(sim.url, allow_none=True)
    thread = threading.Thread(target=lambda: answers.append(
        getattr(proxy, "event.from")(ref, ["task/" + task], token, 30.0)))
    thread.start()
    time.sleep(0.3)

    waiting.xenapi.session.logout()
    thread.join(10)

    assert not thread.is_alive()
    assert answers[0]["ErrorDescription"] == ["SESSION_INVALID", ref]


def test_event_from_has_no_async_mode(sim, session):
    proxy = xmlrpc.client.ServerProxy(sim.url, allow_none=True)
    answer = getattr(proxy, "Async.event.from")(session._session, ["task"], "", 1.0)
    assert answer["ErrorDescription"][0] == "Fault"

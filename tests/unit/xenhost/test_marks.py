"""The marks contract: writers and parsers agree, and the documented table
in docs/interfaces.md is what the writers write."""

import os
import re

import pytest

from nova_xen_split.xenhost import marks

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
INSTANCE = "3f1c2a4e-8b6d-4c1e-9f0a-1b2c3d4e5f60"
LEAF = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"


def _documented():
    """``{(object, key)}`` of the marks table in docs/interfaces.md."""
    with open(os.path.join(ROOT, "docs", "interfaces.md")) as f:
        text = f.read()
    section = text.split("## Marks in XAPI `other_config`", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (VM|VDI|VBD|VIF|SR) \| `([^`]+)` \|", section, re.M)
    return set(rows)


def _written():
    pending_key, _ = marks.pending_chain_mark(LEAF, "hv-1", INSTANCE, 0)
    written = {("VM", key) for key in marks.vm_marks(INSTANCE)}
    written |= {("VM", marks.vm_boot_file_mark(kind, "/boot/guest/%s-x" % kind)[0])
                for kind in marks.BOOT_FILE_KINDS}
    written |= {("VDI", key) for key in marks.vdi_marks(INSTANCE, "root", "hv-1", marks.READY)}
    written.add(("VDI", marks.image_bytes_mark(5)[0]))
    written |= {("VBD", key) for key in marks.vbd_marks("hv-1")}
    written |= {("VIF", key) for key in marks.vif_marks("port-1")}
    written |= {("VM", key) for key in marks.vm_parked(marks.vm_marks(INSTANCE))}
    written |= {("VDI", key) for key in marks.vdi_parked(
        marks.vdi_marks(INSTANCE, "root", "hv-1", marks.READY))}
    written.add(("SR", pending_key.replace(LEAF, "<leaf uuid>")))
    written |= {("VDI", marks.cache_mark(marks.READY, "img-1", "hv-1", 0)[0]),
                ("VDI", marks.cache_checksum_mark("none")[0]),
                ("VDI", marks.cache_used_mark(0)[0]),
                ("VDI", marks.cloned_from_mark(LEAF)[0]),
                ("SR", marks.filling_mark("img-1", "hv-1", 0)[0].replace("img-1", "<image id>"))}
    return written


def test_the_documented_table_is_what_the_writers_write():
    assert _documented() == _written()


def test_a_vdi_mark_reads_back_as_written():
    other = marks.vdi_marks(INSTANCE, "swap", "hv-1", marks.IN_PROGRESS)
    assert marks.read_vdi(other) == marks.VdiMark(INSTANCE, "swap", "hv-1", marks.IN_PROGRESS)
    assert not marks.vdi_ready(other)
    other.update([marks.vdi_state_mark(marks.READY)])
    assert marks.vdi_ready(other) and marks.vdi_instance(other) == INSTANCE


def test_a_vdi_without_an_instance_mark_is_nobodys():
    assert marks.read_vdi({"owner": "tenant-B"}) is None
    assert marks.vdi_instance(None) is None and not marks.vdi_ready({})


def test_an_unknown_vdi_state_is_refused_by_the_writer():
    with pytest.raises(ValueError):
        marks.vdi_state_mark("done")


def test_a_pending_chain_reads_back_and_is_marked_abandoned():
    key, value = marks.pending_chain_mark(LEAF, "hv-1", INSTANCE, 1700000000)
    chain = marks.read_pending_chain(key, value)
    assert chain == marks.PendingChain(key, LEAF, "hv-1", INSTANCE, 1700000000, False)
    abandoned = marks.read_pending_chain(*marks.abandoned_mark(chain))
    assert abandoned == chain._replace(abandoned=True)


@pytest.mark.parametrize("key,value", [
    ("other-key", "hv-1 %s 0" % INSTANCE),                        # not a pending chain
    (marks.pending_chain_key(LEAF), "hv-1 %s" % INSTANCE),        # too few words
    (marks.pending_chain_key(LEAF), "hv-1 %s 0 forgotten" % INSTANCE),
])
def test_other_entries_are_not_pending_chains(key, value):
    assert marks.read_pending_chain(key, value) is None
    assert marks.pending_chains({key: value}) == []


def test_an_unreadable_time_reads_as_stale():
    assert marks.read_pending_chain(
        marks.pending_chain_key(LEAF), "hv-1 %s soon" % INSTANCE).since is None


def test_boot_files_read_back_kernel_first():
    other = dict([marks.vm_boot_file_mark("ramdisk", "/b/ramdisk-1"),
                  marks.vm_boot_file_mark("kernel", "/b/kernel-1")])
    assert marks.vm_boot_files(other) == ["/b/kernel-1", "/b/ramdisk-1"]
    with pytest.raises(ValueError):
        marks.vm_boot_file_mark("initrd", "/b/x")


def test_image_bytes_read_back_and_garbage_reads_as_none():
    assert marks.image_bytes(dict([marks.image_bytes_mark(123)])) == 123
    assert marks.image_bytes({}) is None


def test_a_vif_mark_reads_back_and_a_vif_without_a_port_has_none():
    assert marks.vif_port(marks.vif_marks("port-1")) == "port-1"
    assert marks.vif_marks(None) == {}
    assert marks.vif_port({}) is None


def test_a_parked_vm_and_disk_are_no_longer_the_instances_and_come_back_as_they_were():
    vm_config = dict(marks.vm_marks(INSTANCE), other="kept")
    parked = marks.vm_parked(vm_config)
    assert marks.vm_instance(parked) is None
    assert marks.vm_parked_for(parked) == INSTANCE
    assert marks.vm_unparked(parked) == vm_config
    vdi_config = marks.vdi_marks(INSTANCE, "root", "hv-1", marks.READY)
    parked = marks.vdi_parked(vdi_config)
    assert marks.vdi_instance(parked) is None and marks.read_vdi(parked) is None
    assert marks.vdi_parked_for(parked) == INSTANCE
    assert marks.vdi_unparked(parked) == vdi_config


def test_a_cache_mark_reads_back_with_its_checksum_and_last_use():
    other = dict([marks.cache_mark(marks.FILLING, "img-1", "hv-1", 1700000000),
                  marks.cache_checksum_mark(marks.checksum_text("SHA512", "AB12"))])
    assert marks.read_cache(other) == marks.CacheMark(
        marks.FILLING, "img-1", "hv-1", 1700000000, "sha512:ab12", None)
    other.update([marks.cache_mark(marks.READY, "img-1", "hv-1", 1700000005),
                  marks.cache_used_mark(1700000009)])
    assert marks.read_cache(other) == marks.CacheMark(
        marks.READY, "img-1", "hv-1", 1700000005, "sha512:ab12", 1700000009)
    assert marks.checksum_text(None, None) == "none"


def test_a_clone_carrying_its_parents_cache_keys_is_no_cache_vdi():
    other = dict([marks.cache_mark(marks.READY, "img-1", "hv-1", 0)])
    other.update(marks.vdi_marks(INSTANCE, "root", "hv-1", marks.IN_PROGRESS))
    assert marks.read_cache(other) is None


@pytest.mark.parametrize("value", ["ready img-1 hv-1", "done img-1 hv-1 0", "ready a b c d"])
def test_malformed_cache_marks_are_no_cache_vdis(value):
    assert marks.read_cache({"nxs-image-cache": value}) is None


def test_the_cache_writer_refuses_unknown_states_and_blank_words():
    with pytest.raises(ValueError):
        marks.cache_mark("in-progress", "img-1", "hv-1", 0)
    with pytest.raises(ValueError):
        marks.cache_mark(marks.READY, "img 1", "hv-1", 0)


def test_a_filling_entry_reads_back_and_other_entries_are_not_fillings():
    key, value = marks.filling_mark("img-1", "hv-1", 1700000000)
    assert marks.read_filling(key, value) == marks.Filling(key, "img-1", "hv-1", 1700000000)
    assert marks.fillings({key: value, "other": "hv-1 0",
                           marks.filling_key("img-2"): "hv-1"}) == [
        marks.Filling(key, "img-1", "hv-1", 1700000000)]
    assert marks.cloned_from(dict([marks.cloned_from_mark(LEAF)])) == LEAF

"""Synthetic studies: UIDs derived from their parts alone, never two parts giving the same UID."""

from __future__ import annotations

from pydicom.uid import UID

from zip2pacs.synth import uid


def test_the_same_parts_give_the_same_valid_uid():
    assert uid("instance", 7, 1, 2) == uid("instance", 7, 1, 2)
    assert UID(uid("instance", 7, 1, 2)).is_valid


def test_parts_that_concatenate_alike_give_different_uids():
    assert uid("instance", 5, 1, 23) != uid("instance", 5, 12, 3)
    assert uid("study", 12) != uid("study1", 2)
    assert uid("a", "b") != uid("ab")


def test_every_instance_uid_of_seeds_series_and_instances_up_to_200_is_distinct():
    uids = {uid("instance", seed, s, i) for seed in range(21) for s in range(21) for i in range(201)}
    assert len(uids) == 21 * 21 * 201

"""``sync.attribute_watch.watch``: every assignment to a watched name is told, reads are unchanged."""

import pytest

from sync.attribute_watch import watch


class Plain:
    flag = "class default"

    def __init__(self):
        self.state = 1
        self.other = "x"

    def close(self):
        self.state = 3  # the object's own code assigns too


class WithProperty:
    def __init__(self):
        self._state = "OPEN"
        self.changes = 0

    @property
    def state(self):
        return self._state

    @state.setter
    def state(self, value):
        self.changes += 1
        self._state = value


def test_assignments_by_anyone_are_told_and_reads_are_unchanged():
    obj, told = Plain(), []
    watch(obj, ("state", "flag"), lambda: told.append((obj.state, obj.flag)))
    assert isinstance(obj, Plain) and type(obj).__name__ == "Plain"
    assert obj.state == 1 and obj.flag == "class default" and obj.other == "x"
    obj.close()
    obj.flag = "set"
    obj.other = "y"  # not watched
    assert told == [(3, "class default"), (3, "set")]
    assert obj.__dict__["state"] == 3 and obj.__dict__["flag"] == "set"  # kept where they were


def test_a_property_of_the_class_keeps_its_setter():
    obj, told = WithProperty(), []
    watch(obj, ("state",), lambda: told.append(obj.state))
    obj.state = "CLOSING"
    assert told == ["CLOSING"] and obj.changes == 1 and obj._state == "CLOSING"


def test_one_subclass_per_class_and_the_last_listener_wins():
    a, b, told = Plain(), Plain(), []
    watch(a, ("state",), lambda: told.append("first"))
    watch(b, ("state",), lambda: None)
    assert type(a) is type(b)
    watch(a, ("state",), lambda: told.append("second"))
    assert type(a) is type(b)
    a.state = 2
    assert told == ["second"]


def test_an_unwatched_instance_of_the_class_is_untouched():
    watched, plain = Plain(), Plain()
    watch(watched, ("state",), lambda: None)
    assert type(plain) is Plain
    with pytest.raises(AttributeError):
        del watched.state  # a watched name cannot be deleted, as with any property without a deleter

"""Be told after every assignment to some attributes of an object we do not own.

``watch(obj, names, listener)`` makes ``obj`` an instance of a subclass of its own class (made
once per class and set of names) in which each of ``names`` is a property: reading it returns what
the object holds, as before; assigning it stores the value where the class kept it and then calls
``listener()``. Every assignment is seen, by whichever code makes it, because Python routes
``obj.name = value`` through a data descriptor of the class before the instance's own
``__dict__``. Nothing else about the object changes: same ``__dict__``, same methods, and
``isinstance`` checks against its original class still hold.

Why: a socket that writes frames at once (``sync.socket_flush``) must stop the moment its server
marks the WebSocket closing, whoever closed it. Asking the server's objects before every frame
cost a tenth of a worker's CPU in the fan-out (they are touched by no other step of the delivery);
being told of each change costs nothing per frame.

The object's class must allow ``__class__`` assignment (a plain Python class with a ``__dict__``)."""

from __future__ import annotations

import inspect

_LISTENER = "_khala_watch"  # the instance's listener, kept in its ``__dict__``
_ABSENT = object()
_SUBCLASSES: dict = {}  # (class, names) -> watched subclass
_WATCHED = set()  # the watched subclasses


def watch(obj, names: tuple[str, ...], listener) -> None:
    """Call ``listener()`` after each assignment to ``obj``'s attributes ``names`` from now on. A
    second call replaces the listener (the names must be the same)."""
    cls = type(obj)
    if cls not in _WATCHED:
        sub = _SUBCLASSES.get((cls, names))
        if sub is None:
            sub = _SUBCLASSES[(cls, names)] = _watched_subclass(cls, names)
            _WATCHED.add(sub)
        obj.__class__ = sub
    obj.__dict__[_LISTENER] = listener


def _watched_subclass(cls: type, names: tuple[str, ...]) -> type:
    attrs = {}
    for name in names:
        existing = inspect.getattr_static(cls, name, _ABSENT)
        attrs[name] = _told_property(existing) if isinstance(existing, property) else _told_attribute(name, existing)
    sub = type(cls.__name__, (cls,), attrs)
    sub.__qualname__, sub.__module__ = cls.__qualname__, cls.__module__  # log lines keep their names
    return sub


def _tell(obj) -> None:
    listener = obj.__dict__.get(_LISTENER)
    if listener is not None:
        listener()


def _told_attribute(name: str, class_value=_ABSENT) -> property:
    """A plain instance attribute, still kept in the instance's ``__dict__`` under ``name``; until
    the instance has one, the class's value (if any) is read, as before."""

    def get(self):
        try:
            return self.__dict__[name]
        except KeyError:
            if class_value is _ABSENT:
                raise AttributeError(name) from None
            return class_value

    def set_(self, value) -> None:
        self.__dict__[name] = value
        _tell(self)

    return property(get, set_)


def _told_property(prop: property) -> property:
    """The class's own property, its setter followed by the listener."""

    def set_(self, value) -> None:
        prop.fset(self, value)
        _tell(self)

    return property(prop.fget, set_, prop.fdel, prop.__doc__)

"""Which libvirtd hook calls the daemon hook acts on, in a module of its own.

libvirtd runs the hook for every operation of every domain (prepare,
start, started, stopped, release, reconnect, ...), synchronously, and a
failure at ``started begin`` destroys the domain.  The hook's console
script reads this list before it imports anything else, so a call it
does not act on costs only the interpreter's start-up.
"""

OP_PREPARE = ('prepare', 'begin')
OP_STOPPED = ('stopped', 'end')
OP_RELEASE = ('release', 'end')
OP_MIGRATE = ('migrate', 'begin')
OP_STARTED = ('started', 'begin')
#: (operation, sub-operation) pairs the hook acts on.
ACTED_ON = (OP_PREPARE, OP_STARTED, OP_STOPPED, OP_RELEASE, OP_MIGRATE)
#: Those of ACTED_ON it acts on only when libvirt's XML holds the text:
#: ``started begin`` only relays a VNC console (``<graphics
#: type='vnc'>``, see console.relay.display). libvirt formats element
#: names as they are, so XML without "<graphics" has no graphics element,
#: and the compiled client does not hand that call on (in the lab, 0.25
#: to 0.3 s of every start of a domain without a console).
ACTED_ON_ONLY_WITH = {OP_STARTED: '<graphics'}


def only_with(acted):
    """The (operation, text) rules of ACTED_ON_ONLY_WITH for ``acted``,
    in a fixed order (the compiled client's, and its build id's).
    """
    return sorted((op, text) for op, text in ACTED_ON_ONLY_WITH.items()
                  if op in acted)

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

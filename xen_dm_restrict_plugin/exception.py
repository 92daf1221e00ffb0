"""The errors this library raises, under one base class.

Callers (an orchestrator, the console script, the libvirt daemon hook)
catch :class:`DmRestrictError` to tell "this request was refused" from a
bug.  Every refusal names what was refused, why, and what to do instead,
because the operator reading it has no other way to learn the remedy.
The console script maps :class:`Refused` to exit code 2 and anything else
to 1.
"""


class DmRestrictError(Exception):
    """Base class of every error raised by xen_dm_restrict_plugin."""


class Explained(DmRestrictError):
    """An error told as subject, reason and remedy.

    :param subject: the feature, element, option or operation at fault.
    :param reason: what is wrong with it.
    :param remedy: what the operator or tenant can do about it.
    """

    def __init__(self, subject: str, reason: str, remedy: str):
        self.subject = subject
        self.reason = reason
        self.remedy = remedy
        # The three parts stay the args, so the error can be rebuilt from
        # them (oslo.privsep re-raises daemon errors as type(*args)).
        super().__init__(subject, reason, remedy)

    def __str__(self) -> str:
        return '%s: %s. Remedy: %s.' % (
            self.subject, self.reason, self.remedy)


class Refused(Explained):
    """A request that is refused: bad input or an unsupported feature."""


class Unavailable(Explained):
    """Something this request needs cannot be reached (libvirt, a file)."""


class InvalidDomainXML(Refused):
    """The domain XML is malformed, hostile, oversized or not a domain."""


class FeatureRefused(Refused):
    """The domain uses a feature that breaks or is unsafe under dm_restrict.
    """


class OperationRefused(Refused):
    """A lifecycle operation on a restricted domain is refused."""


class ConfigError(Refused):
    """The configuration is invalid; the subject names the option."""


class LeaseError(Refused):
    """No uid lease could be taken, kept or released."""


class RangeExhausted(LeaseError):
    """Every uid in the tenant's range is leased or unusable."""


class CapabilityMissing(Refused):
    """The host cannot deliver the restriction it was asked for."""


class HookLoadError(DmRestrictError):
    """A configured domain hook is missing or cannot be loaded."""


class HookFailed(DmRestrictError):
    """A domain hook raised something that is not a DmRestrictError.

    :param hook: the name of the hook that failed.
    :param error: the original exception.
    """

    def __init__(self, hook: str, error: BaseException):
        self.hook = hook
        self.error = error
        super().__init__('domain hook %r failed: %s: %s'
                         % (hook, type(error).__name__, error))


class ReapError(DmRestrictError):
    """Processes of a uid could not be killed, or the reap was refused."""

"""User-facing errors: one clear line, no traceback."""


class DfmetaError(Exception):
    """A mistake in the user's input (a path, a field, a file): reported as one line by the CLI."""


def reason(e: BaseException, limit: int = 240) -> str:
    """``Type: message`` of a wrapped exception for a one-line error: the message's first line whole, or where that is
    longer than ``limit`` characters, cut after its last full sentence (else word) before the limit, never mid-word."""
    lines = str(e).strip().splitlines()
    text = lines[0].strip() if lines else ""
    if len(text) > limit:
        head = text[:limit + 1]
        end = head.rfind(". ")
        text = head[:end + 1] if end > 0 else head[:head.rfind(" ")].rstrip(" ,;:") + " ..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__

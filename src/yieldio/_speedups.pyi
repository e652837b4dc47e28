"""Types of the compiled module (src/yieldio/_speedups.c), which the build makes when it finds a C compiler."""

SOURCE_SHA256: str  # the SHA-256 of the _speedups.c it was compiled from

def echo_step(fd: int, buffer: memoryview, head: int, /) -> int | tuple[int, int] | None: ...
def request_step(
    fd: int, buffer: bytearray | memoryview, prefix: bytes, message: bytes, following: bytes | None, /
) -> float | tuple[float, int] | bytes | None: ...

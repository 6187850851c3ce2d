"""Seeded generators of reasoning tasks whose depth is a knob: the out-of-distribution probe.

Each generator maps (random.Random, difficulty) to one `Example` with an exact answer:
- `pointer_chase`: variable binding over k hops, statements shuffled, with a distractor chain of
  the same length ("b=a; q=4; a=7; r=q; c=b. c?" -> "7"); difficulty = k.
- `addition`: two d-digit numbers (carries arise naturally); difficulty = d.
- `sudoku4`: a 4x4 Sudoku with exactly one solution; difficulty = number of blank cells.
Training draws difficulties from one range and the held-out OOD split from a strictly harder one,
so evaluation can ask whether more recursion buys generalisation to deeper instances.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from millennial.data import DataError


@dataclass(frozen=True)
class Example:
    """A generated prompt with its one correct answer."""

    task: str
    difficulty: int
    prompt: str
    answer: str


def pointer_chase(rng: random.Random, hops: int) -> Example:
    """Follow `hops` variable-to-variable bindings back to a digit, past a distractor chain."""
    names = rng.sample(string.ascii_lowercase, 2 * (hops + 1))
    target, distractor = names[: hops + 1], names[hops + 1 :]
    value, other = rng.sample(string.digits, 2)
    statements = []
    for chain, start in ((target, value), (distractor, other)):
        statements.append(f"{chain[0]}={start}")
        statements.extend(f"{chain[i]}={chain[i - 1]}" for i in range(1, len(chain)))
    rng.shuffle(statements)
    return Example("pointer_chase", hops, f"{'; '.join(statements)}. {target[-1]}?", value)


def addition(rng: random.Random, digits: int) -> Example:
    """Add two numbers of exactly `digits` digits each."""
    low, high = 10 ** (digits - 1), 10**digits - 1
    a, b = rng.randint(low, high), rng.randint(low, high)
    return Example("addition", digits, f"{a} + {b} =", str(a + b))


Grid = list[int]  # 16 cells, row-major, 0 = blank

_UNITS: list[tuple[int, ...]] = [
    *(tuple(4 * r + c for c in range(4)) for r in range(4)),
    *(tuple(4 * r + c for r in range(4)) for c in range(4)),
    *(tuple(4 * (br + r) + bc + c for r in range(2) for c in range(2))
      for br in (0, 2) for bc in (0, 2)),
]
_PEERS: list[frozenset[int]] = [
    frozenset(cell for unit in _UNITS if index in unit for cell in unit) - {index}
    for index in range(16)
]


def _candidates(grid: Grid, index: int) -> list[int]:
    used = {grid[peer] for peer in _PEERS[index]}
    return [digit for digit in range(1, 5) if digit not in used]


def count_solutions(grid: Grid, limit: int = 2) -> int:
    """Count completions of a 4x4 grid, stopping at `limit` (2 suffices to test uniqueness)."""
    try:
        index = grid.index(0)
    except ValueError:
        return 1
    found = 0
    for digit in _candidates(grid, index):
        grid[index] = digit
        found += count_solutions(grid, limit - found)
        grid[index] = 0
        if found >= limit:
            break
    return found


def _random_solution(rng: random.Random) -> Grid:
    grid = [0] * 16

    def fill(index: int) -> bool:
        if index == 16:
            return True
        digits = _candidates(grid, index)
        rng.shuffle(digits)
        for digit in digits:
            grid[index] = digit
            if fill(index + 1):
                return True
        grid[index] = 0
        return False

    fill(0)
    return grid


SUDOKU_ATTEMPTS = 200


def sudoku4(rng: random.Random, blanks: int) -> Example:
    """Blank cells of a random solved grid one by one, keeping a blank only if the puzzle still
    has exactly one solution, until `blanks` cells are empty (retrying from a fresh grid)."""
    for _ in range(SUDOKU_ATTEMPTS):
        solution = _random_solution(rng)
        puzzle = list(solution)
        emptied = 0
        for index in rng.sample(range(16), 16):
            if emptied == blanks:
                break
            puzzle[index] = 0
            if count_solutions(puzzle) == 1:
                emptied += 1
            else:
                puzzle[index] = solution[index]
        if emptied == blanks:
            return Example("sudoku4", blanks, f"sudoku {_rows(puzzle)} ->", _rows(solution))
    raise DataError(f"sudoku4: no unique puzzle with {blanks} blanks in {SUDOKU_ATTEMPTS} tries")


def _rows(grid: Grid) -> str:
    cells = "".join(str(digit) if digit else "." for digit in grid)
    return " ".join(cells[i : i + 4] for i in range(0, 16, 4))


Generator = Callable[[random.Random, int], Example]

TASKS: dict[str, Generator] = {
    "pointer_chase": pointer_chase,
    "addition": addition,
    "sudoku4": sudoku4,
}
DIFFICULTY_LIMITS: dict[str, tuple[int, int]] = {
    "pointer_chase": (1, 12),  # two chains of distinct single-letter names
    "addition": (1, 60),
    "sudoku4": (1, 12),  # 4 givens is the minimum for a unique 4x4 puzzle
}


def generate(task: str, count: int, difficulty: tuple[int, int], seed: int) -> Iterator[Example]:
    """`count` examples of `task`, difficulty uniform in the inclusive range, fixed by `seed`."""
    if task not in TASKS:
        raise DataError(f"unknown task '{task}' (known: {', '.join(sorted(TASKS))})")
    low, high = difficulty
    floor, ceiling = DIFFICULTY_LIMITS[task]
    if not floor <= low <= high <= ceiling:
        raise DataError(
            f"task '{task}': difficulty range [{low}, {high}] outside [{floor}, {ceiling}]"
        )
    rng = random.Random(seed)
    for _ in range(count):
        yield TASKS[task](rng, rng.randint(low, high))

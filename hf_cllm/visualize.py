"""Pictures of one Jacobi trajectory: per iteration, which tokens of the block are already fixed.

Each cell is one block position at one iteration, in one of three kinds:
- *accepted*: part of the settled prefix, already equal to the fixed point with everything before it;
- *correct*: already equal to the fixed point although a token before it is still wrong (a "stationary" token,
  the thing consistency training makes common);
- *wrong*: still to change.
"""

from __future__ import annotations

import torch


ACCEPTED, CORRECT, WRONG = 2, 1, 0
_ANSI = {ACCEPTED: "\033[30;42m", CORRECT: "\033[30;43m", WRONG: "\033[37;41m"}
_RESET = "\033[0m"


def classify_states(states: torch.Tensor) -> torch.Tensor:
    """states: `(num_states, n)` of one block, the fixed point last -> `(num_states, n)` of ACCEPTED/CORRECT/WRONG."""
    correct = states == states[-1]
    settled = correct.long().cumprod(-1).bool()
    return torch.where(settled, ACCEPTED, torch.where(correct, CORRECT, WRONG))


def _cell_text(tokenizer, token: int, width: int) -> str:
    text = tokenizer.decode([token]).replace("\n", "⏎").replace("\t", "⇥")
    text = "".join(char if char.isprintable() else "·" for char in text)
    return text[:width].ljust(width)


def render_terminal(states: torch.Tensor, tokenizer, width: int = 6, color: bool = True) -> str:
    """The trajectory as text, one line per iteration. In colour: green accepted, yellow correct, red wrong;
    without colour each cell is marked `+` accepted, `~` correct, ` ` wrong."""
    marks = {ACCEPTED: "+", CORRECT: "~", WRONG: " "}
    lines = []
    for step, (state, kinds) in enumerate(zip(states.tolist(), classify_states(states).tolist())):
        label = "fixed " if step == len(states) - 1 else f"it {step + 1:>3}"
        cells = [
            f"{_ANSI[kind]}{_cell_text(tokenizer, token, width)}{_RESET}"
            if color
            else marks[kind] + _cell_text(tokenizer, token, width)
            for token, kind in zip(state, kinds)
        ]
        lines.append(f"{label} |" + "".join(cells))
    return "\n".join(lines)


def plot_trajectory(states: torch.Tensor, tokenizer, path, title: str = "Jacobi trajectory of one block") -> None:
    """Save the trajectory as a PNG grid: iterations top to bottom, block positions left to right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    kinds = classify_states(states).numpy()
    num_states, n = kinds.shape
    colors = ["#f4a6a6", "#f7dc6f", "#7dcea0"]  # wrong, correct, accepted
    fig, ax = plt.subplots(figsize=(max(6, 0.75 * n + 1.5), max(2.5, 0.42 * num_states + 1.4)))
    ax.imshow(kinds, cmap=ListedColormap(colors), vmin=0, vmax=2, aspect="auto")
    for row in range(num_states):
        for column in range(n):
            text = _cell_text(tokenizer, int(states[row, column]), 6).strip()
            ax.text(column, row, text, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(n), [str(i) for i in range(n)], fontsize=7)
    ax.set_yticks(range(num_states), [f"iter {i + 1}" for i in range(num_states - 1)] + ["fixed point"], fontsize=7)
    ax.set_xlabel("position in the block")
    ax.set_title(title, fontsize=10)
    ax.legend(
        handles=[
            Patch(color=colors[2], label="accepted"),
            Patch(color=colors[1], label="correct, not yet accepted"),
            Patch(color=colors[0], label="wrong"),
        ],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12 if num_states > 4 else -0.3),
        ncol=3,
        fontsize=7,
        frameon=False,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)

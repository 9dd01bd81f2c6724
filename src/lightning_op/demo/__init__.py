"""The closed-loop demo: a simulated analytics agent gets better at picking tools from its own traffic.

- ``agent``: the agent (five analytics tools, an OpenAI-compatible model behind it, the capture client
  recording every turn) and its query generator, with the expected tool per query family.
- ``model``: the small base model, pre-trained briefly on the agent's flawed habits (for some query
  families it usually picks a wrong but related tool, sometimes the right one).
- ``run``: the orchestration behind ``lightning-op demo``: serve, collect, label, dry run, build the
  dataset, train in evaluation rounds, promote, replay, compare. It reports each step through a
  callback and never prints; the CLI renders the steps.
"""

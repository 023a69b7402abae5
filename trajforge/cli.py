"""The trajforge command line: the typer app and the list of its commands, each kept in
trajforge/commands/ by concern. Heavy libraries are imported inside commands, so `--help`
answers at once."""

from __future__ import annotations

import typer

from trajforge.commands import export, query, run, serve, service, tasks, train

app = typer.Typer(
    help="trajforge manufactures verified training data for LLM agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# In the order `trajforge --help` lists them.
app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(run.run)
app.command()(query.sql)
app.command()(tasks.tasks)
app.command()(query.runs)
app.command()(export.export)
app.command()(export.exports)
app.command()(train.train)
app.command("serve-model")(serve.serve_model)
app.command()(service.migrate)
app.command()(service.report)

if __name__ == "__main__":
    app()

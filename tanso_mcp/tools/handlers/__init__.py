"""Tool handlers, one module per capability. Functions are named after the `handler`
field of each ToolSpec; `<handler>_preview` is the optional confirmAction preview."""

"""tanso-mcp: a self-hostable monetization engine for B2B SaaS, driven over MCP."""

__version__ = "0.1.0"

"""Pure types and rules: events, versions, validation, errors. Imports nothing above it."""

"""The operator web console (`callroute console`): see app.py."""

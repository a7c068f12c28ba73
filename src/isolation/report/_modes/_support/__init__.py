"""What the failure modes' checks share: databases and sandboxes for the session modes
(1 to 4, async and sync faces), and event-draining and two-router Redis helpers for
the event modes (10, 13 to 16). Mode-specific helpers live in their mode's package."""

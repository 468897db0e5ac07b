"""Label Studio gateway, payload builders and the webhook / ML-backend HTTP app."""
